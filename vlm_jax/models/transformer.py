"""Pre-LayerNorm transformer pieces shared by the image and text towers.

Every param carries logical axis names (`embed`, `mlp`, `heads`, `kv`, ...); the mesh rules in
the config decide how they map onto devices, so these modules never see a mesh.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def logical(init, names):
    return nn.with_logical_partitioning(init, names)


# MLP activations (`model.act`): GELU's tanh approximation (ViT, SigLIP), exact GELU, and
# CLIP's x * sigmoid(1.702 x).
ACTIVATIONS = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}


def layer_norm(name: str | None = None, dtype: Dtype = jnp.float32,
               eps: float = 1e-6, remat: str = "none") -> nn.LayerNorm:
    """A LayerNorm over `embed`; rematerialised under a `remat` policy (its float32
    intermediates are twice the size of its bfloat16 input, which is all it then keeps)."""
    return rematerialised(nn.LayerNorm, remat)(
        name=name, dtype=dtype, epsilon=eps,
        scale_init=logical(nn.initializers.ones, ("embed",)),
        bias_init=logical(nn.initializers.zeros, ("embed",)))


def constrain(x, names):
    return nn.with_logical_constraint(x, names)


class Attention(nn.Module):
    """Multi-head dot-product attention; `kv` defaults to the queries (self-attention)."""
    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, kv=None, mask=None):
        kv = x if kv is None else kv
        d = x.shape[-1]
        if d % self.heads:
            raise ValueError(f"width {d} is not divisible by heads {self.heads}")
        hd = d // self.heads
        # Fans over the true input/output axes: a d -> (heads, head_dim) map is a d x d matrix.
        in_init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        out_init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)

        def proj(name, y):   # keys/values may come from a tower of another width
            return nn.Einsum(
                (y.shape[-1], self.heads, hd), "bsd,dhk->bshk", name=name, dtype=self.dtype,
                kernel_init=logical(in_init, ("embed", "heads", "kv")),
                bias_init=logical(nn.initializers.zeros, ("heads", "kv")))(y)

        q, k, v = proj("q", x), proj("k", kv), proj("v", kv)
        # mask: [B, 1|H, Q, K] booleans, True where a query may attend to a key.
        y = jax.nn.dot_product_attention(q, k, v, mask=mask)
        y = constrain(y, ("batch", "seq", "heads", "kv"))
        return nn.Einsum(
            (self.heads, hd, d), "bshk,hkd->bsd", name="out", dtype=self.dtype,
            kernel_init=logical(out_init, ("heads", "kv", "embed")),
            bias_init=logical(nn.initializers.zeros, ("embed",)))(y)


class Mlp(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32
    act: str = "gelu_tanh"

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        init = nn.initializers.xavier_uniform()
        bias = nn.initializers.normal(1e-6)
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1",
                     kernel_init=logical(init, ("embed", "mlp")),
                     bias_init=logical(bias, ("mlp",)))(x)
        x = constrain(ACTIVATIONS[self.act](x), ("batch", "seq", "mlp"))
        return nn.Dense(d, dtype=self.dtype, name="fc2",
                        kernel_init=logical(init, ("mlp", "embed")),
                        bias_init=logical(bias, ("embed",)))(x)


class Block(nn.Module):
    """Pre-LN block: self-attention, then (given `context`) cross-attention to it, then MLP.
    `scanned` blocks return `(x, None)`, the carry and output `nn.scan` expects."""
    heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    scanned: bool = False
    act: str = "gelu_tanh"
    norm_eps: float = 1e-6
    sublayers: bool = False  # rematerialise each sub-layer apart (remat policy `sublayers`)

    @nn.compact
    def __call__(self, x, mask=None, context=None, context_mask=None):
        sub = "nothing_saveable" if self.sublayers else "none"
        ln = functools.partial(layer_norm, dtype=self.dtype, eps=self.norm_eps, remat=sub)
        attention = rematerialised(Attention, sub)
        x = constrain(x, ("batch", "seq", "embed"))
        x = x + attention(self.heads, self.dtype, name="attn")(
            ln("ln1")(x), mask=mask)
        if context is not None:
            x = x + attention(self.heads, self.dtype, name="xattn")(
                ln("ln_x")(x), kv=context, mask=context_mask)
        x = x + rematerialised(Mlp, sub)(self.mlp_dim, self.dtype, self.act, name="mlp")(
            ln("ln2")(x))
        x = constrain(x, ("batch", "seq", "embed"))
        return (x, None) if self.scanned else x


# Rematerialisation policies (`model.remat`): what the backward pass may keep instead of
# recomputing. `nothing_saveable` recomputes each block whole; `sublayers` too, and within the
# block's backward pass recomputes its attention and its MLP apart, so that only one sub-layer's
# activations are alive at a time (for one more forward pass of each attention);
# the `dots_*` ones keep matmul outputs and recompute only the cheap elementwise work.
REMAT_POLICIES = ("none", "nothing_saveable", "sublayers", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "everything_saveable")


def rematerialised(cls, remat: str, scan: bool = False):
    """Module class `cls` under the `remat` policy (REMAT_POLICIES; "none": `cls` itself)."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat policy {remat!r}; choose one of {REMAT_POLICIES}")
    if remat == "none":
        return cls
    policy = getattr(jax.checkpoint_policies,
                     "nothing_saveable" if remat == "sublayers" else remat)
    # Under scan, CSE cannot merge the recomputation with the forward pass anyway.
    return nn.remat(cls, policy=policy, prevent_cse=not scan)


def stack(x, *, depth: int, heads: int, mlp_dim: int, dtype: Dtype, remat: str = "none",
          scan: bool = False, mask=None, context=None, context_mask=None,
          act: str = "gelu_tanh", norm_eps: float = 1e-6):
    """`depth` Blocks over x, created in the calling module: `block0`, `block1`, ... or, with
    `scan`, one `blocks` whose params carry a leading `layers` axis (one compiled block body,
    so compile time does not grow with depth). Returns x and each block's output (looped only).
    """
    block = rematerialised(Block, remat, scan)
    if scan:
        layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=depth,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = layers(heads, mlp_dim, dtype, scanned=True, act=act, norm_eps=norm_eps,
                      sublayers=remat == "sublayers", name="blocks")(
            x, mask, context, context_mask)
        return x, {}
    out = {}
    for i in range(depth):
        x = block(heads, mlp_dim, dtype, act=act, norm_eps=norm_eps,
                  sublayers=remat == "sublayers", name=f"block{i}")(
            x, mask, context, context_mask)
        out[f"block{i}"] = x
    return x, out


class Encoder(nn.Module):
    """`depth` blocks and a final LayerNorm; returns the tokens and each block's output (when
    not scanned; see `stack`)."""
    depth: int
    heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    remat: str = "none"
    scan: bool = False
    act: str = "gelu_tanh"
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x, mask=None):
        x, blocks = stack(x, depth=self.depth, heads=self.heads, mlp_dim=self.mlp_dim,
                          dtype=self.dtype, remat=self.remat, scan=self.scan, mask=mask,
                          act=self.act, norm_eps=self.norm_eps)
        return layer_norm("ln_final", self.dtype, self.norm_eps, self.remat)(x), blocks
