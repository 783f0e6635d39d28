"""Device meshes from the config, and multi-process start-up."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


def make_mesh(shape: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A mesh with the named axes in `shape`; one size may be -1 (all remaining devices).

    Axes are Auto (GSPMD), which flax.linen's logical constraints need.
    """
    devices = list(jax.devices() if devices is None else devices)
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
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                         devices=devices)


def from_config(config) -> Mesh:
    return make_mesh({a: config.mesh[a] for a in AXES})


def maybe_initialize_distributed() -> None:
    """Joins a multi-process job when the environment describes one; a no-op otherwise.

    Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run where
    jax.distributed auto-detects the cluster, e.g. SLURM or Cloud TPU, with JAX_DISTRIBUTED=1).
    """
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif os.environ.get("JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
