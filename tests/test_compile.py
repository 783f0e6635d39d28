"""launch.compile: the train step compiled for TPU slices on this CPU machine (libtpu's
compile-only devices), and its report."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import process_env, tiny_flags

from vlm_jax.parallel import mesh as mesh_lib, topology
from vlm_jax.train import aot


def test_topology_names():
    assert topology.resolve("v5e-256") == topology.resolve("v5litepod-256") == "v5e:16x16"
    assert topology.resolve("v5p-1024") == "v5p:8x8x8"       # TensorCores: 512 chips
    assert topology.resolve("v4-32") == "v4:2x2x4" and topology.resolve("v6e-16") == "v6e:4x4"
    assert topology.resolve("V5E:2x2") == "v5e:2x2"
    with pytest.raises(ValueError, match="chips 1, 4, 8"):
        topology.resolve("v5e-3")
    with pytest.raises(ValueError, match="unknown TPU topology 'tpu9'"):
        topology.resolve("tpu9")
    devices = topology.devices("v4-8")                       # megacore: one device a chip
    assert len(devices) == 4 and devices[0].device_kind == "TPU v4"
    assert topology.hbm_bytes(devices[0]) == int(30.75 * 2**30)
    assert topology.hbm_bytes(devices[0], 2.0) == 2 * 2**30


def test_replica_runs_across_slices():
    devices = topology.devices("v5e:2x2", num_slices=2)
    mesh = mesh_lib.make_mesh({"replica": 2, "data": 4}, devices=devices)
    slices = [[d.slice_index for d in row.flat] for row in mesh.devices]
    assert slices == [[0] * 4, [1] * 4]                       # one replica a slice


def test_missing_libtpu_is_named(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"needs libtpu: pip install -e '\.\[tpu\]'"):
        topology.devices("v5e:2x2")


def test_the_compilers_out_of_memory_is_read():
    devices = topology.devices("v5e:2x2")
    mesh = mesh_lib.make_mesh({"data": 4}, devices=devices)
    x = jax.ShapeDtypeStruct((4 * 64, 1 << 30), jnp.float32,
                             sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    with pytest.raises(Exception) as e:
        jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T).lower(x).compile()
    assert aot.out_of_memory(e.value) == {"required_gib": 896.0, "available_gib": 15.75}
    assert aot.out_of_memory(ValueError("something else")) is None


def test_compile_reports_memory_collectives_and_flops(data_dir):
    """The quickstart at the suite's tiny size on v5e-4 (data 2 x fsdp 2), as the command runs it:
    the JSON report's fields, and an HBM made too small to hold it: DOES NOT FIT, exit code 3."""
    flags = [f for f in tiny_flags(data_dir) if "data_dir" not in f]
    r = subprocess.run([sys.executable, "-m", "launch.compile", "--config", "configs/quickstart.py",
                        "--topology", "v5e-4", "--json", "--hbm_gib", "0.005", *flags,
                        "--config.mesh.data=2", "--config.mesh.fsdp=2",
                        "--config.mesh.fsdp_min_mib=0"],
                       capture_output=True, text=True, timeout=300, env=process_env(1))
    assert r.returncode == 3, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["topology"] == "v5e:2x2" and out["chips"] == 4 and out["slices"] == 1
    assert out["device_kind"] == "TPU v5 lite" and out["mesh"]["fsdp"] == 2
    assert out["hbm_gib"] == pytest.approx(0.005) and out["fits"] is False and out["error"] is None
    total = out["arguments_gib"] + out["outputs_gib"] + out["temporaries_gib"] - out["aliased_gib"]
    assert out["total_gib"] == pytest.approx(total) and out["total_gib"] > 0.005
    assert out["margin_gib"] == pytest.approx(0.005 - out["total_gib"])
    assert out["tflop_per_step"] > 0 and 0 < out["params_gib"] < out["arguments_gib"]
    assert out["collectives"]["all-gather"]["count"] > 0          # fsdp gathers params
    assert out["collectives"]["all-reduce"]["bytes"] > 0
    assert all(mib >= 0 for _, mib in out["replicated_mib"])
