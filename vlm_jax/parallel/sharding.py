"""Logical axis rules: how named param/activation axes map onto mesh axes."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def logical_rules(config) -> tuple:
    """The config's rules as flax expects them: ((logical_name, mesh_axes), ...)."""
    out = []
    for rule in config.mesh.rules:
        name, axes = rule
        out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


def batch_axes(rules: Sequence) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over."""
    for name, axes in rules:
        if name == "batch":
            if axes is None:
                return ()
            return tuple(axes) if isinstance(axes, tuple) else (axes,)
    raise ValueError("the mesh rules do not place the logical axis 'batch'")


def batch_sharding(mesh: Mesh, rules: Sequence) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(boxed_params, mesh: Mesh, rules: Sequence):
    """NamedShardings for a tree of logically-annotated (boxed) params or their abstract shapes."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_params), mesh, rules)
