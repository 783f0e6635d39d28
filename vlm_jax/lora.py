"""LoRA adapters on any flax model's dense layers (Dense, DenseGeneral, Einsum), chosen by `(regex, rank)` rules over module
paths ('/'-joined, e.g. `block3/attn/q`): each chosen layer's output gains
`(alpha / rank) * (x A) B`, A [in, rank] random and B [rank, out] zero at the start, so the
adapted model starts as the base one. The adapters are a param tree of their own, beside the
untouched base params: train them alone (the base gets no gradient and no optimizer state) and
`merge` them into the base weights to export. Looped layers only (a scanned stack's layers
share one module path).
"""
from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DENSE = (nn.Dense, nn.DenseGeneral, nn.Einsum)


def _path(module) -> str:
    return "/".join(module.path)


def _n_inputs(module) -> int:
    """How many trailing input dims the layer contracts."""
    if isinstance(module, nn.Einsum):       # 'bthk,hkd->btd': h and k
        lhs, rhs = module.einsum_str.replace(" ", "").split("->")[0].split(",")
        return len(set(lhs) & set(rhs))
    axis = getattr(module, "axis", -1)
    return len(axis) if isinstance(axis, (tuple, list)) else 1


def chosen(rules, path: str) -> int:
    """The rank of the first rule whose regex matches `path` whole (0: not adapted)."""
    for pattern, rank in rules:
        if re.fullmatch(pattern, path):
            return int(rank)
    return 0


def init(model, params, rules, rng, *args, **kwargs) -> dict:
    """{module path: {'a', 'b'}} for the dense layers the rules choose, found by tracing
    `model.apply(params, *args)` once (shapes only)."""
    found = {}

    def record(next_fun, a, kw, context):
        m = context.module
        if isinstance(m, DENSE) and context.method_name == "__call__":
            path, n_in = _path(m), _n_inputs(m)
            if (rank := chosen(rules, path)) and path not in found:
                if "blocks" in m.path and getattr(model, "c", None) is not None and model.c.scan:
                    raise ValueError(f"LoRA on {path}: scanned layers are not supported; "
                                     "loop them (scan=False)")
                y = next_fun(*a, **kw)
                fan_in = math.prod(a[0].shape[-n_in:])
                found[path] = (rank, fan_in, math.prod(y.shape[a[0].ndim - n_in:]))
                return y
        return next_fun(*a, **kw)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda p: model.apply({"params": p}, *args, **kwargs), params)
    if not found:
        raise ValueError(f"LoRA rules {tuple(rules)} choose no dense layer of the model")
    keys = jax.random.split(rng, len(found))
    return {path: {"a": jax.random.normal(k, (fan_in, rank)) / math.sqrt(fan_in),
                   "b": jnp.zeros((rank, fan_out))}
            for k, (path, (rank, fan_in, fan_out)) in zip(keys, sorted(found.items()))}


def apply(model, params, adapters: dict, alpha: float, *args, **kwargs):
    """`model.apply` with the adapters added to their layers' outputs."""
    def add(next_fun, a, kw, context):
        m = context.module
        y = next_fun(*a, **kw)
        if context.method_name != "__call__" or not isinstance(m, DENSE):
            return y
        ad = adapters.get(_path(m))
        if ad is None:
            return y
        x, n_in = a[0], _n_inputs(m)
        rank = ad["a"].shape[1]
        flat = x.reshape(*x.shape[:x.ndim - n_in], -1).astype(jnp.float32)
        delta = (flat @ ad["a"]) @ ad["b"] * (alpha / rank)
        return y + delta.reshape(y.shape).astype(y.dtype)
    with nn.intercept_methods(add):
        return model.apply({"params": params}, *args, **kwargs)


def merge(params, adapters: dict, alpha: float):
    """The base params with each adapter folded into its layer's kernel (the export)."""
    out = jax.tree.map(np.asarray, nn.unbox(params))
    for path, ad in adapters.items():
        node = out
        for name in path.split("/"):
            if name not in node:
                raise ValueError(f"LoRA adapter {path!r} names no layer of these params")
            node = node[name]
        rank = ad["a"].shape[1]
        update = np.asarray(ad["a"] @ ad["b"]) * (alpha / rank)
        node["kernel"] = (node["kernel"] + update.reshape(node["kernel"].shape)).astype(
            node["kernel"].dtype)
    return out
