"""Softmax (CLIP / InfoNCE) and sigmoid (SigLIP) contrastive losses over sharded batches.

The bodies are pure functions of one shard's L2-normalised embeddings `[b, D]`, written against
named mesh axes: `negatives="local"` scores each shard's own b x b block (no communication),
`negatives="global"` scores every pair of the B x B matrix by all-gathering embeddings
(`impl="gather"`; memory O(b * B) per device). Both return the exact global-batch loss, replicated,
as DESIGN.md defines it, plus the metrics DESIGN.md asks every loss to log.

`contrastive_loss` runs a body inside `jax.shard_map` over the batch axes of a mesh; without a
mesh the same body runs on the whole batch as one shard.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

Axis = str | tuple[str, ...] | None


def _psum(x, axis: Axis):
    return x if axis is None else jax.lax.psum(x, axis)


def _pmax(x, axis: Axis):
    return x if axis is None else jax.lax.pmax(x, axis)


def _gather(x, axis: Axis):
    return x if axis is None else jax.lax.all_gather(x, axis, axis=0, tiled=True)


def _shard_index(axis: Axis):
    return 0 if axis is None else jax.lax.axis_index(axis)


def _logit_stats(logits, pos, n_global, n_pairs, axis: Axis) -> dict:
    """Means of the positive and negative logits over the whole (scored) matrix."""
    pos_sum = _psum(jnp.sum(pos), axis)
    neg_sum = _psum(jnp.sum(logits), axis) - pos_sum
    return {"pos_logit": pos_sum / n_global,
            "neg_logit": neg_sum / jnp.maximum(n_pairs - n_global, 1)}


def softmax_body(zimg, ztxt, scale, *, axis: Axis, negatives: str):
    """0.5 * (CE over image rows + CE over text rows), each the mean over the B positives."""
    b = zimg.shape[0]
    n_shards = _psum(1, axis)
    n_global = b * n_shards
    if negatives == "global":
        offset = _shard_index(axis) * b
        i2t = scale * zimg @ _gather(ztxt, axis).T          # [b, B]: my images vs all texts
        t2i = scale * ztxt @ _gather(zimg, axis).T          # [b, B]: my texts vs all images
        n_pairs = n_global * n_global
    else:
        offset = 0
        i2t = scale * zimg @ ztxt.T                          # [b, b]
        t2i = i2t.T
        n_pairs = n_global * b
    labels = offset + jnp.arange(b)
    pos = jnp.take_along_axis(i2t, labels[:, None], axis=1)[:, 0]
    ce_i = jax.nn.logsumexp(i2t, axis=1) - pos
    ce_t = jax.nn.logsumexp(t2i, axis=1) - pos
    loss = _psum(0.5 * (ce_i.sum() + ce_t.sum()), axis) / n_global
    acc_i = _psum(jnp.sum(jnp.argmax(i2t, axis=1) == labels), axis) / n_global
    acc_t = _psum(jnp.sum(jnp.argmax(t2i, axis=1) == labels), axis) / n_global
    metrics = {"i2t_acc": acc_i, "t2i_acc": acc_t, "scale": scale,
               **_logit_stats(i2t, pos, n_global, n_pairs, axis)}
    return loss, metrics


def sigmoid_body(zimg, ztxt, scale, bias, *, axis: Axis, negatives: str):
    """-(1/B) * sum_ij log_sigmoid(z_ij * (scale * x_i . y_j + bias)), z = +1 on positives."""
    b = zimg.shape[0]
    n_shards = _psum(1, axis)
    n_global = b * n_shards
    if negatives == "global":
        offset = _shard_index(axis) * b
        logits = scale * zimg @ _gather(ztxt, axis).T + bias     # [b, B]; images stay home
        n_pairs = n_global * n_global
    else:
        offset = 0
        logits = scale * zimg @ ztxt.T + bias                     # [b, b]
        n_pairs = n_global * b
    labels = offset + jnp.arange(b)
    z = jnp.where(jnp.arange(logits.shape[1])[None, :] == labels[:, None], 1.0, -1.0)
    loss = -_psum(jnp.sum(jax.nn.log_sigmoid(z * logits)), axis) / n_global
    pos = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    acc_i = _psum(jnp.sum(jnp.argmax(logits, axis=1) == labels), axis) / n_global
    # Text -> image accuracy without gathering images: a text is right when its positive beats
    # the best image of every shard for it (one [B] max-reduction, not a second all-gather).
    col_max = _pmax(jax.lax.stop_gradient(logits).max(axis=0), axis)
    acc_t = _psum(jnp.sum(pos >= jax.lax.dynamic_slice_in_dim(col_max, offset, b)), axis) / n_global
    metrics = {"i2t_acc": acc_i, "t2i_acc": acc_t, "scale": scale, "bias": bias,
               **_logit_stats(logits, pos, n_global, n_pairs, axis)}
    return loss, metrics


def contrastive_loss(kind: str, zimg, ztxt, scale, bias=None, *, negatives: str = "global",
                     mesh: Mesh | None = None, batch_axes: Sequence[str] = ("data",)):
    """(loss, metrics) of `kind` (softmax|sigmoid) for global [B, D] normalised embeddings.

    With a mesh, the batch dimension is split over `batch_axes` and the body runs per shard inside
    `jax.shard_map`; gradients flow back through the collectives (all-gather -> reduce-scatter).
    """
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown contrastive loss {kind!r}; choose softmax or sigmoid")
    if negatives not in ("local", "global"):
        raise ValueError(f"unknown negatives {negatives!r}; choose local or global")
    bias = jnp.zeros((), jnp.float32) if bias is None else bias

    def body(zi, zt, s, b_, axis):
        if kind == "softmax":
            return softmax_body(zi, zt, s, axis=axis, negatives=negatives)
        return sigmoid_body(zi, zt, s, b_, axis=axis, negatives=negatives)

    if mesh is None:
        return body(zimg, ztxt, scale, bias, None)
    axes = tuple(batch_axes)
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    if zimg.shape[0] % n:
        raise ValueError(f"global batch {zimg.shape[0]} is not divisible by the {n} shards of "
                         f"mesh axes {axes}")
    spec = P(axes)
    return jax.shard_map(lambda zi, zt, s, b_: body(zi, zt, s, b_, axes), mesh=mesh,
                         in_specs=(spec, spec, P(), P()), out_specs=(P(), P()))(
        zimg, ztxt, scale, bias)
