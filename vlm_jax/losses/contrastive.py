"""Softmax (CLIP / InfoNCE) and sigmoid (SigLIP) contrastive losses over sharded batches.

The bodies are pure functions of one shard's L2-normalised embeddings `[b, D]`, written against
named mesh axes: `negatives="local"` scores each shard's own b x b block (no communication),
`negatives="global"` scores every pair of the B x B matrix, either by all-gathering embeddings
(`impl="gather"`; memory O(b * B) per device) or by passing text chunks around the ring of
devices (`impl="ring"`, see `ring.py`; memory O(b^2 + b * D)). All return the exact global-batch
loss, replicated, and the same metrics: scale (and bias), mean positive and negative logits,
and image->text / text->image in-batch accuracy.

With N shards of b examples (B = N * b) and L2-normalised embeddings x_i, y_j:
- softmax: logits = s * x @ y.T; loss = 0.5 * (CE over rows + CE over columns), each the mean
  over the B positives;
- sigmoid: logits = t * x @ y.T + b; loss = -(1/B) * sum_ij log_sigmoid(z_ij * logits_ij) with
  z = +1 on positive pairs and -1 elsewhere;
- local negatives: the mean over shards of each shard's loss on its own b x b block.

`contrastive_loss` runs a body inside `jax.shard_map` over the batch axes of a mesh; without a
mesh the same body runs on the whole batch as one shard.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from vlm_jax.losses import ring
from vlm_jax.parallel import sharding

Axis = str | tuple[str, ...] | None


def _psum(x, axis: Axis):
    return x if axis is None else jax.lax.psum(x, axis)


def _pmax(x, axis: Axis):
    return x if axis is None else jax.lax.pmax(x, axis)


def _gather(x, axis: Axis):
    return x if axis is None else jax.lax.all_gather(x, axis, axis=0, tiled=True)


def _shard_index(axis: Axis):
    return 0 if axis is None else jax.lax.axis_index(axis)


def _finish(loss_sum, sums: dict, b: int, n_shards: int, negatives: str, axis: Axis,
            extra: dict):
    """Per-shard sums -> (global-batch loss, metrics), identical for every implementation.

    The counts are Python numbers: the pairs of a global batch of 2^16 or more (B^2) do not fit
    an int32, and a float64 holds them exactly up to B = 2^26."""
    n_global = b * n_shards
    n_neg = float(max(n_global * (n_global if negatives == "global" else b) - n_global, 1))
    total = {k: _psum(v, axis) for k, v in sums.items()}
    metrics = {"i2t_acc": total["i2t_correct"] / float(n_global),
               "t2i_acc": total["t2i_correct"] / float(n_global),
               "pos_logit": total["pos_sum"] / float(n_global),
               "neg_logit": total["neg_sum"] / n_neg, **extra}
    return _psum(loss_sum, axis) / float(n_global), metrics


def _block_sums(logits, pos, t2i_correct) -> dict:
    """A pair counts as retrieved when its logit is the maximum of its row (ties count: a
    duplicate caption is as good a match as the original)."""
    return {"pos_sum": jnp.sum(pos), "neg_sum": jnp.sum(logits) - jnp.sum(pos),
            "i2t_correct": jnp.sum(pos >= logits.max(axis=1)), "t2i_correct": t2i_correct}


def softmax_body(zimg, ztxt, scale, *, axis: Axis, n: int, negatives: str):
    """0.5 * (CE over image rows + CE over text rows), each the mean over the B positives."""
    b = zimg.shape[0]
    if negatives == "global":
        offset = _shard_index(axis) * b
        i2t = scale * zimg @ _gather(ztxt, axis).T          # [b, B]: my images vs all texts
        t2i = scale * ztxt @ _gather(zimg, axis).T          # [b, B]: my texts vs all images
    else:
        offset = 0
        i2t = scale * zimg @ ztxt.T                          # [b, b]
        t2i = i2t.T
    labels = offset + jnp.arange(b)[:, None]
    pos = jnp.take_along_axis(i2t, labels, axis=1)[:, 0]
    pos_t = jnp.take_along_axis(t2i, labels, axis=1)[:, 0]
    ce = (jax.nn.logsumexp(i2t, axis=1) - pos) + (jax.nn.logsumexp(t2i, axis=1) - pos_t)
    sums = _block_sums(i2t, pos, jnp.sum(pos_t >= t2i.max(axis=1)))
    return _finish(0.5 * ce.sum(), sums, b, n, negatives, axis, {"scale": scale})


def sigmoid_body(zimg, ztxt, scale, bias, *, axis: Axis, n: int, negatives: str):
    """-(1/B) * sum_ij log_sigmoid(z_ij * (scale * x_i . y_j + bias)), z = +1 on positives."""
    b = zimg.shape[0]
    if negatives == "global":
        offset = _shard_index(axis) * b
        logits = scale * zimg @ _gather(ztxt, axis).T + bias     # [b, B]; images stay home
    else:
        offset = 0
        logits = scale * zimg @ ztxt.T + bias                     # [b, b]
    labels = offset + jnp.arange(b)
    z = jnp.where(jnp.arange(logits.shape[1])[None, :] == labels[:, None], 1.0, -1.0)
    loss_sum = -jnp.sum(jax.nn.log_sigmoid(z * logits))
    pos = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    # Text -> image accuracy without gathering images: a text is right when its positive beats
    # the best image of every shard for it (one [B] max-reduction, not a second all-gather).
    col_max = _pmax(jax.lax.stop_gradient(logits).max(axis=0), axis)
    t2i = jnp.sum(pos >= jax.lax.dynamic_slice_in_dim(col_max, offset, b))
    return _finish(loss_sum, _block_sums(logits, pos, t2i), b, n, negatives, axis,
                   {"scale": scale, "bias": bias})


def softmax_ring_body(zimg, ztxt, scale, *, axis: Axis, n: int):
    loss_sum, sums = ring.softmax_ring(zimg, ztxt, _varying(scale, axis), axis, n)
    return _finish(loss_sum, sums, zimg.shape[0], n, "global", axis, {"scale": scale})


def sigmoid_ring_body(zimg, ztxt, scale, bias, *, axis: Axis, n: int):
    loss_sum, sums = ring.sigmoid_ring(zimg, ztxt, _varying(scale, axis), _varying(bias, axis),
                                       axis, n)
    return _finish(loss_sum, sums, zimg.shape[0], n, "global", axis,
                   {"scale": scale, "bias": bias})


def _varying(x, axis: Axis):
    # A replicated scalar enters the custom-VJP ring as per-device: its per-device gradient
    # parts are then summed by the transpose of this cast.
    return jax.lax.pcast(x, axis, to="varying")


def contrastive_loss(kind: str, zimg, ztxt, scale, bias=None, *, negatives: str = "global",
                     impl: str = "gather", mesh: Mesh | None = None,
                     batch_axes: Sequence[str] = ("data",)):
    """(loss, metrics) of `kind` (softmax|sigmoid) for global [B, D] normalised embeddings.

    With a mesh, the batch dimension is split over `batch_axes` and the body runs per shard inside
    `jax.shard_map`; gradients flow back through the collectives. `impl` picks how global
    negatives are scored: `gather` (all-gather, O(b * B) memory per device) or `ring`
    (ppermute ring with recomputing custom VJPs, O(b^2 + b * D)); local negatives need neither.
    """
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown contrastive loss {kind!r}; choose softmax or sigmoid")
    if negatives not in ("local", "global"):
        raise ValueError(f"unknown negatives {negatives!r}; choose local or global")
    if impl not in ("gather", "ring"):
        raise ValueError(f"unknown contrastive impl {impl!r}; choose gather or ring")
    bias = jnp.zeros((), jnp.float32) if bias is None else bias
    axes = tuple(batch_axes) if mesh is not None else None
    n = sharding.shards(mesh, axes)
    if zimg.shape[0] % n:
        raise ValueError(f"global batch {zimg.shape[0]} is not divisible by the {n} shards of "
                         f"mesh axes {axes}")

    def body(zi, zt, s, b_):
        if impl == "ring" and negatives == "global" and axes is not None:
            if kind == "softmax":
                return softmax_ring_body(zi, zt, s, axis=axes, n=n)
            return sigmoid_ring_body(zi, zt, s, b_, axis=axes, n=n)
        if kind == "softmax":
            return softmax_body(zi, zt, s, axis=axes, n=n, negatives=negatives)
        return sigmoid_body(zi, zt, s, b_, axis=axes, n=n, negatives=negatives)

    if mesh is None:
        return body(zimg, ztxt, scale, bias)
    spec = P(axes)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, P(), P()),
                         out_specs=(P(), P()))(zimg, ztxt, scale, bias)
