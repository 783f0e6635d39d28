"""Rows of a batch-sharded array picked by global index, without gathering the whole batch.

`x[index]` on an array sharded over the batch, with indices that may name any shard's rows,
compiles to an all-gather of all of `x` on every device: for ITM's hard negatives that is the
whole batch's image and text tokens on every chip (at 32k examples of 196 ViT-B/16 tokens,
~9.6 GB in bfloat16). `take` passes the shards' blocks around a ring instead: each device keeps,
at every hop, the rows its indices name in the block it holds, so one block is in memory at a
time. It moves as many bytes as the all-gather would; its transpose (the gradient) sends the
rows' cotangents back around the ring the same way.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from vlm_jax.parallel import sharding


def _pick(blocks, out, index, owner, b):
    """`out` plus, where `index` falls in shard `owner`'s rows, those rows of `blocks` (zeros
    elsewhere: each row is picked at exactly one hop). A gather that fills out-of-range rows
    with zeros, not a select: a select's transpose would keep its predicate broadcast to the
    block's shape for the backward pass, at every hop (at 256 shards of 128 ViT-B/16 token
    rows, 6 GiB per chip); the gather's keeps only the [b] indices."""
    local = index - owner * b
    local = jnp.where((local >= 0) & (local < b), local, b)       # b: out of range, filled
    return [o + x.at[local].get(mode="fill", fill_value=0) for x, o in zip(blocks, out)]


def take(xs: Sequence[jax.Array], index: jax.Array, *, mesh: Mesh | None,
         batch_axes: Sequence[str] = ("data",), local: bool = False) -> list[jax.Array]:
    """[x[index] for x in xs]: each x [B, ...] and `index` [B] (ints into the global batch)
    sharded alike over `batch_axes`. `local`: every index names a row of its own shard (no
    communication). Without a mesh, a plain take."""
    xs = list(xs)
    axes = tuple(batch_axes)
    n = 1 if mesh is None else sharding.shards(mesh, axes)
    if n == 1:
        return [x[index] for x in xs]
    perm = [(j, (j + 1) % n) for j in range(n)]

    def body(index, *blocks):
        b = index.shape[0]
        me = jax.lax.axis_index(axes)
        out = _pick(blocks, [jnp.zeros_like(x) for x in blocks], index, me, b)
        if local:
            return out

        def hop(carry, _):                 # receive the previous shard's block
            blocks, owner, out = carry
            blocks = [jax.lax.ppermute(x, axes, perm) for x in blocks]
            owner = (owner - 1) % n
            return (blocks, owner, _pick(blocks, out, index, owner, b)), None
        (_, _, out), _ = jax.lax.scan(hop, (list(blocks), me, out), None, length=n - 1)
        return out

    spec = P(axes)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec,) + (spec,) * len(xs),
                         out_specs=[spec] * len(xs))(index, *xs)
