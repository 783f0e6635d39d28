"""How arrays map onto the mesh: logical axis rules for activations and params, and regex
param rules on top of them.

Modules name their axes (`batch`, `embed`, `mlp`, `heads`, ...); `mesh.rules` maps those names
onto mesh axes. Params are then placed by `mesh.param_rules`, `(regex over the param path,
strategy)` pairs (first match wins, every param must match), where a strategy is a `|`-joined
sequence of steps applied left to right:

  logical    the spec the module's logical axis names give under `mesh.rules`
  fsdp       shard the largest still-unsharded dimension divisible by the `fsdp` axis over it,
             for params of at least `mesh.fsdp_min_mib` (small ones stay replicated: gathering
             them costs more latency than they save memory)
  replicate  no sharding at all

A dimension not divisible by its mesh axes stays replicated along them.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
from flax.core import meta
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlm_jax import rules as rules_lib

STRATEGY_STEPS = ("logical", "fsdp", "replicate")


def shapes(boxed_params):
    """The plain param shapes of logically annotated (boxed) ones, without applying sharding
    constraints (nn.unbox would, under an ambient mesh)."""
    return meta.map_axis_meta(lambda x: x.unbox(apply_constraint=False), boxed_params)


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


def shards(mesh, axes: Sequence[str]) -> int:
    """How many pieces `mesh` axes `axes` split a dimension into (1 without a mesh)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in axes)


def batch_shards(mesh, rules: Sequence) -> int:
    """How many shards the batch dimension is split into on `mesh` (a Mesh or AbstractMesh)."""
    return shards(mesh, batch_axes(rules))


def ambient_batch() -> tuple:
    """(the mesh installed by jax.set_mesh, the mesh axes the logical 'batch' axis maps to under
    the logical rules installed by nn.logical_axis_rules); (None, ()) outside any mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None, ()
    return mesh, _axes(nn.logical_to_mesh_axes(("batch",))[0])


def batch_sharding(mesh: Mesh, rules: Sequence) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _fsdp(spec: list, shape: Sequence[int], nbytes: int, mesh: Mesh, min_bytes: float) -> list:
    n = mesh.shape.get("fsdp", 1)
    if n == 1 or nbytes < min_bytes or any("fsdp" in _axes(e) for e in spec):
        return spec
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n == 0]
    if not free:
        return spec
    d = max(free, key=lambda i: (shape[i], -i))     # the largest; the first among equals
    return spec[:d] + ["fsdp"] + spec[d + 1:]


def _divisible(spec: list, shape: Sequence[int], mesh: Mesh) -> list:
    out = []
    for entry, size in zip(spec, shape):
        axes = _axes(entry)
        if axes and size % shards(mesh, axes):
            entry = None
        out.append(entry)
    return out


def check_strategy(strategy: str, where: str) -> None:
    steps = strategy.split("|") if isinstance(strategy, str) else [strategy]
    for step in steps:
        if step not in STRATEGY_STEPS:
            raise ValueError(f"{where}: unknown sharding step {step!r} in {strategy!r}; "
                             f"steps are {'|'.join(STRATEGY_STEPS)}")


def param_spec(strategy: str, shape: Sequence[int], dtype, logical: P, mesh: Mesh,
               rules: Sequence, fsdp_min_bytes: float = 0.0) -> P:
    """The PartitionSpec `strategy` gives one param (see the module docstring)."""
    spec = [None] * len(shape)
    for step in strategy.split("|"):
        if step == "replicate":
            spec = [None] * len(shape)
        elif step == "logical":
            mesh_axes = nn.logical_to_mesh_axes(tuple(logical), rules) if len(logical) else ()
            spec = list(mesh_axes) + [None] * (len(shape) - len(mesh_axes))
        elif step == "fsdp":
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            spec = _fsdp(spec, shape, nbytes, mesh, fsdp_min_bytes)
    spec = _divisible(spec, shape, mesh)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _specs(boxed_params, mesh: Mesh, rules: Sequence, param_rules: Sequence,
           fsdp_min_mib: float):
    """[(path, shape, rule index, PartitionSpec)] per param, and the tree structure."""
    for i, (_, strategy) in enumerate(param_rules):
        check_strategy(strategy, f"mesh.param_rules #{i}")
    names, treedef = jax.tree.flatten(nn.get_partition_spec(boxed_params),
                                      is_leaf=lambda x: isinstance(x, P))
    leaves = jax.tree_util.tree_flatten_with_path(shapes(boxed_params))[0]
    compiled = rules_lib.compile_rules(param_rules, "sharding")
    out = []
    for (path, x), logical in zip(leaves, names):
        p = rules_lib.path_str(path)
        i, strategy = rules_lib.first(compiled, param_rules, p, "sharding")
        spec = param_spec(strategy, x.shape, x.dtype, logical, mesh, rules, fsdp_min_mib * 2**20)
        out.append((p, tuple(x.shape), i, spec))
    return out, treedef


def param_specs(boxed_params, mesh: Mesh, rules: Sequence,
                param_rules: Sequence = ((".*", "logical"),), fsdp_min_mib: float = 0.0):
    """PartitionSpecs for a tree of logically-annotated (boxed) params or their abstract shapes."""
    specs, treedef = _specs(boxed_params, mesh, rules, param_rules, fsdp_min_mib)
    return jax.tree.unflatten(treedef, [s for *_, s in specs])


def param_shardings(boxed_params, mesh: Mesh, rules: Sequence,
                    param_rules: Sequence = ((".*", "logical"),), fsdp_min_mib: float = 0.0):
    """NamedShardings for a tree of logically-annotated (boxed) params or their abstract shapes."""
    specs, treedef = _specs(boxed_params, mesh, rules, param_rules, fsdp_min_mib)
    return jax.tree.unflatten(treedef, [NamedSharding(mesh, s) for *_, s in specs])


def describe(boxed_params, mesh: Mesh, rules: Sequence, param_rules: Sequence,
             fsdp_min_mib: float) -> list[str]:
    """One line per param: the rule that matched it and the spec it got (logged at start)."""
    specs, _ = _specs(boxed_params, mesh, rules, param_rules, fsdp_min_mib)
    return [f"sharding: {p} {shape} <- rule #{i} {param_rules[i][0]!r} = "
            f"{param_rules[i][1]!r}: {spec}" for p, shape, i, spec in specs]


def device_bytes(params) -> int:
    """Bytes of `params` held by the first device (its shards only)."""
    dev = jax.devices()[0]
    total = 0
    for x in jax.tree.leaves(params):
        for shard in x.addressable_shards:
            if shard.device == dev:
                total += shard.data.nbytes
    return total
