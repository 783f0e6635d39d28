"""Device meshes from the config, and multi-process start-up."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("replica", "data", "fsdp", "tensor")     # outermost first


def make_mesh(shape: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A mesh with the named axes in `shape` (the `AXES` it leaves out have size 1); one size may
    be -1 (all remaining devices).

    Axes are Auto (GSPMD), which flax.linen's logical constraints need. On a multi-slice TPU job
    (devices with a `slice_index`) whose slice count equals `replica`, the replica axis runs
    across slices (DCN) and the others within one (ICI)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = {**{a: 1 for a in AXES if a not in shape}, **shape}
    names = [a for a in AXES if a in shape] + [a for a in shape if a not in AXES]
    sizes = [int(shape[a]) for a in names]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if known <= 0 or len(devices) % known:
        raise ValueError(f"mesh {dict(shape)} does not fit {len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    auto = (AxisType.Auto,) * len(names)
    slices = {getattr(d, "slice_index", None) for d in devices}
    replica = sizes[names.index("replica")]
    if replica > 1 and None not in slices and len(slices) == replica:
        ici = [1 if n == "replica" else s for n, s in zip(names, sizes)]
        dcn = [replica if n == "replica" else 1 for n in names]
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
        return Mesh(grid, tuple(names), axis_types=auto)
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=auto, devices=devices)


def from_config(config, devices: Sequence | None = None) -> Mesh:
    """The config's mesh over `devices` (default: all of this process's job)."""
    return make_mesh({a: config.mesh[a] for a in AXES}, devices)


def describe_cluster(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, environ=os.environ) -> dict | None:
    """How to join a multi-process job, or None for a single process (never initialise then).

    In order: explicit arguments (the launch flags); JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID; a SLURM job step with more than one task; a multi-host Cloud TPU slice
    (more than one TPU_WORKER_HOSTNAMES). The last two are left to jax's own detection."""
    if coordinator_address or num_processes is not None or process_id is not None:
        if not coordinator_address or num_processes is None or process_id is None:
            raise ValueError("--coordinator_address, --num_processes and --process_id go together")
        if num_processes == 1:
            return None
        return {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    if "JAX_COORDINATOR_ADDRESS" in environ:
        n = int(environ.get("JAX_NUM_PROCESSES", "1"))
        return None if n == 1 else {"coordinator_address": environ["JAX_COORDINATOR_ADDRESS"],
                                    "num_processes": n,
                                    "process_id": int(environ["JAX_PROCESS_ID"])}
    if int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))) > 1:
        return {}
    if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return {}
    return None


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Joins a multi-process job when the arguments or the environment describe one (see
    `describe_cluster`); returns whether it did. A single process never initialises."""
    how = describe_cluster(coordinator_address, num_processes, process_id)
    if how is None:
        return False
    jax.distributed.initialize(**how)
    return True
