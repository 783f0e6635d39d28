"""Compile-only devices of a named TPU slice, made by libtpu on any machine (no TPU needed).

Names as JAX takes them (`v5e:16x16`, `v5p:8x8x8`, `v6e:4x4`, `v4:2x2x1`: chips per axis) or as
Cloud TPU sells them (`v5e-256`, `v5litepod-256`, `v6e-16`: chips; `v5p-1024`, `v4-32`:
TensorCores, two per chip). The devices carry the slice's real layout (coordinates, and
`slice_index` for several slices), so meshes and compiled programs are the ones the slice runs.
"""
from __future__ import annotations

import importlib.util
import os
import re

# Chips -> the 2-D grid of a v5e / v6e slice, and the 3-D torus of a v4 / v5p slice.
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
# Sold name -> (generation, counts TensorCores).
_SOLD = {"v5e": ("v5e", False), "v5litepod": ("v5e", False), "v6e": ("v6e", False),
         "v5p": ("v5p", True), "v4": ("v4", True)}

# HBM per chip that the TPU compiler lets a program use, in GiB, by `device_kind`: what its
# out-of-memory errors state as available (libtpu 0.0.42; the chips have 16, 32, 95 and 32).
HBM_GIB = {"TPU v5 lite": 15.75, "TPU v6 lite": 31.25, "TPU v5": 95.74, "TPU v4": 30.75}


def resolve(name: str) -> str:
    """`name` in JAX's form (generation:AxB[xC])."""
    name = name.strip().lower()
    if re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)+", name):
        return name
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name)
    if not m or m.group(1) not in _SOLD:
        raise ValueError(f"unknown TPU topology {name!r}: give generation:AxB[xC] (v5e:16x16, "
                         f"v5p:8x8x8) or a slice name ({', '.join(sorted(_SOLD))} with a size, "
                         "e.g. v5e-256, v5p-1024)")
    gen, cores = _SOLD[m.group(1)]
    chips = int(m.group(2)) // (2 if cores else 1)
    shapes = _TORUS_3D if cores else _GRID_2D
    if chips not in shapes:
        unit = "TensorCores (two a chip)" if cores else "chips"
        sizes = ", ".join(str(c * (2 if cores else 1)) for c in shapes)
        raise ValueError(f"{name!r} is not a slice size of {gen}: {unit} {sizes}")
    return f"{gen}:{shapes[chips]}"


def devices(name: str, num_slices: int = 1) -> list:
    """The compile-only devices of `num_slices` slices of topology `name` (one per chip)."""
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError("compiling for a TPU slice needs libtpu: pip install -e '.[tpu]' "
                           "(make test installs it)")
    # libtpu looks for a TPU VM's metadata and warns without it, and locks the machine's TPU
    # for one process; compiling needs neither.
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                       ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                       ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
        os.environ.setdefault(key, value)
    from jax.experimental import topologies
    full = resolve(name)
    kwargs = {"chip_config_name": "megacore"} if full.startswith("v4:") else {}
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    return list(topologies.get_topology_desc(topology_name=full, platform="tpu",
                                             **kwargs).devices)


def hbm_bytes(device, override_gib: float = 0.0) -> int | None:
    """Usable HBM of one chip like `device` (`override_gib` when set); None when unknown."""
    gib = override_gib or HBM_GIB.get(device.device_kind)
    return None if gib is None else int(gib * 2**30)
