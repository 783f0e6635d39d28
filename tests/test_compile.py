"""launch.compile: the train step compiled for TPU slices on this CPU machine (libtpu's
compile-only devices), and its report."""
import functools
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
    # Its other form, once buffers are assigned (SigLIP B/16 at 262,144 on v5e-256, one pass).
    assigned = RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile "
                            "permanent error. Ran out of memory in memory space hbm. Used 15.75G "
                            "of 15.75G hbm. Exceeded hbm capacity by 5.66M.")
    assert aot.out_of_memory(assigned) == pytest.approx(
        {"required_gib": 15.75 + 5.66 / 1024, "available_gib": 15.75})


def test_compile_reports_memory_collectives_and_flops(data_dir):
    """The quickstart at the suite's tiny size on v5e-4 (data 2 x fsdp 2), as the command runs it:
    the JSON report's fields (the train step's and the evaluation towers'), and an HBM made too small to hold it: DOES NOT FIT, exit code 3."""
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
    e = out["eval"]                   # the evaluators' towers, compiled at eval.batch_size
    assert e["global_batch"] % 2 == 0 and isinstance(e["fits"], bool)
    assert 0 < e["text"]["total_gib"] < e["image"]["total_gib"] and e["image"]["error"] is None


def _loss_program(n_chips, impl, per_chip, dim=64, loss="sigmoid"):
    """value_and_grad of a contrastive loss over global negatives, compiled for a v5e slice."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vlm_jax.losses.contrastive import contrastive_loss
    devices = topology.devices({4: "v5e:2x2", 16: "v5e:4x4"}[n_chips])
    mesh = mesh_lib.make_mesh({"data": n_chips}, devices=devices)
    z = jax.ShapeDtypeStruct((per_chip * n_chips, dim), jnp.float32,
                             sharding=NamedSharding(mesh, P("data")))
    s = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    f = lambda zi, zt, t: contrastive_loss(loss, zi, zt, t, t, mesh=mesh, impl=impl)[0]
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(z, z, s).compile()


def test_ring_temporaries_stay_flat_where_gathers_grow():
    """The softmax loss's value and gradient at 2,048 examples per chip compiled for 16 v5e
    chips: the gathered logits (2,048 x the global batch, float32: 256 MiB, growing with the
    chips) outgrow what the compiler keeps in fused loops, the ring's b x b blocks do not."""
    temps = {impl: _loss_program(16, impl, 2048, loss="softmax").memory_analysis()
             .temp_size_in_bytes for impl in ("gather", "ring")}
    assert temps["gather"] >= 2048 * 2048 * 16 * 4, temps
    assert temps["ring"] <= 2**20, temps             # flat: no [b, B] buffer at any size


def test_itm_mining_gathers_each_embedding_once_on_tpu():
    """Global hard-negative mining compiled for v5e-4: one all-gather each of the image and text
    embeddings and the match groups (the TPU compiler otherwise gathers again per use: 5 here).
    Inside a whole ALBEF step it still re-streams them per use: docs/BENCHMARKS.md."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vlm_jax.losses import itm
    mesh = mesh_lib.make_mesh({"data": 4}, devices=topology.devices("v5e-4"))
    sh = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(
        mesh, P("data") if shape else P()))
    mine = jax.jit(lambda a, b, g, s: itm.mine_negatives(jax.random.key(0), a, b, s, mesh=mesh,
                                                         groups=g))
    text = mine.lower(sh((1024, 64), jnp.bfloat16), sh((1024, 64), jnp.bfloat16),
                      sh((1024,), jnp.int32), sh((), jnp.float32)).compile().as_text()
    assert aot.collectives(text)["all-gather"]["count"] == 3


def test_find_batch_returns_a_batch_that_fits_where_the_next_does_not():
    """The search over real compiles (the gathered loss on 4 chips, 150 KiB of HBM): the batch it
    returns fits and the next candidate does not; every probe is logged. From a start above
    the boundary it halves down, and it stops within the resolution asked."""
    @functools.lru_cache      # probed again below: compile-only programs do not load back
    def fits(batch):
        return aot.total_bytes(_loss_program(4, "gather", batch // 4)) <= 150 * 2**10
    seen = []
    out = aot.find_batch(fits, 4 * 16, log=seen.append)
    assert out["largest"] and out["largest"] % 64 == 0 and out["next"] == out["largest"] + 64
    assert fits(out["largest"]) and not fits(out["next"])
    assert len(seen) == len(out["probes"]) >= 3
    assert seen[-1] == f"global batch {out['probes'][-1][0]}: " + (
        "fits" if out["probes"][-1][1] else "does not fit")
    # From a start that does not fit, halving; bisected to within 4 multiples.
    down = aot.find_batch(fits, 64, start=2 * out["next"] + 5, resolution=256, log=seen.append)
    assert down["probes"][0] == (2 * out["next"], False)
    assert fits(down["largest"]) and not fits(down["next"])
    assert down["largest"] <= out["largest"] < down["next"] <= down["largest"] + 256


def test_published_setups_build_at_their_papers_size():
    """configs/published.py: the published models' parameter counts (SigLIP B/16 203M, So400m/14
    878M, CLIP L/14 428M), built without their tokenizer files from `tokenizer.vocab_size`."""
    from configs import published
    from vlm_jax import config as config_lib
    from vlm_jax.data import tokenizer as tokenizer_lib
    from vlm_jax.setup import Setup
    want = {"siglip-b16-256": 203.8, "siglip-so400m14-384": 879.3, "clip-l14-224": 427.6}
    for name in published.SETUPS:
        c = published.get_config(name)
        config_lib.validate(c)
        tok = tokenizer_lib.build(c, stand_in=True)
        assert tok.vocab_size == c.tokenizer.vocab_size
        params = Setup(c, mesh_lib.make_mesh({}, devices=jax.devices()[:1]),
                       tokenizer=tok).param_shapes
        assert sum(x.size for x in jax.tree.leaves(params)) / 1e6 == pytest.approx(
            want[name], abs=0.1), name
        assert c.batch_size == 32_768 and c.contrastive.impl == "ring"
    assert published.get_config("clip-l14-224:/d/*.ar").data.sources.web.path == "/d/*.ar"
    with pytest.raises(ValueError, match="needs a name: one of siglip-b16-256"):
        published.get_config("vit-h")
    c = published.get_config("siglip-b16-256")
    with pytest.raises(ValueError, match="encodes no text: give tokenizer.path"):
        tokenizer_lib.build(c, stand_in=True).encode("a photo")
    with pytest.raises(ValueError, match="tokenizer.path"):      # training needs the file
        tokenizer_lib.build(c)
    c.tokenizer.vocab_size = 0
    with pytest.raises(ValueError, match="set tokenizer.vocab_size to compile without it"):
        tokenizer_lib.build(c, stand_in=True)
    c.tokenizer.name, c.tokenizer.vocab_size = "bytes", 300
    with pytest.raises(ValueError, match="tokenizer.vocab_size=300 but the 'bytes' tokenizer has 260 ids"):
        tokenizer_lib.build(c)


def test_collectives_are_read_from_the_program_text():
    hlo = """
  %all-gather.1 = bf16[1,32,64]{2,1,0:T(8,128)(2,1)} all-gather(%p), channel_id=2, dimensions={1}
  %all-reduce.3 = (f32[32]{0:T(128)S(1)}, f32[32,2,16]{2,0,1:T(8,128)}) all-reduce(%a, %b), to_apply=%add
  %cp-start = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%x), source_target_pairs={{0,1}}
  %cp-done = f32[8]{0} collective-permute-done(%cp-start)
  %fusion.2 = f32[4]{0} fusion(%all-gather.1), kind=kLoop, calls=%fused_computation
"""
    got = aot.collectives(hlo)
    assert got["all-gather"] == {"count": 1, "bytes": 2 * 32 * 64}
    assert got["all-reduce"] == {"count": 1, "bytes": 4 * (32 + 32 * 2 * 16)}
    assert got["collective-permute"] == {"count": 1, "bytes": 4 * 8}      # -done, not -start
    assert got["reduce-scatter"]["count"] == got["all-to-all"]["count"] == 0
