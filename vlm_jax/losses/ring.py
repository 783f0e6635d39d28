"""Ring implementations of the global-negative contrastive losses: O(b^2 + b*D) memory per device.

The all-gather implementation holds a b x B block of logits (and its cotangent) per device, so
its memory grows with the number of devices. Here each text chunk travels around the ring of
devices with `lax.ppermute`, and each device holds one b x b block at a time. Plain autodiff
would keep every visited block for the backward pass; the `jax.custom_vjp`s below keep only the
embeddings (and, for softmax, the log-normalisers) and send the chunk around a second time in
the backward pass, together with an accumulator for its gradient, recomputing each block.

Both bodies run inside `jax.shard_map` over the batch axes and return this shard's sums; the
caller normalises by the global batch and psums, exactly as for the gather implementation.
Each also returns the same metric sums the gather bodies log, computed on the forward ring: the
travelling chunk carries each text's best image logit, which is how text->image accuracy is
known without gathering images. A pair counts as retrieved when its logit is the maximum of its
row (ties count: a duplicate caption is as good a match as the original).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _ring_perm(n: int):
    return [(j, (j + 1) % n) for j in range(n)]


def _shift(x, axis, n):
    return jax.lax.ppermute(x, axis, _ring_perm(n))


# ----------------------------------------------------------------------------- sigmoid

def _sigmoid_block(zi, zc, scale, bias, home: bool):
    logits = scale * zi @ zc.T + bias
    z = (2 * jnp.eye(zi.shape[0], dtype=logits.dtype) - 1) if home else -1.0
    return logits, -jnp.sum(jax.nn.log_sigmoid(z * logits))


def _sigmoid_block_grads(zi, zc, scale, bias, home: bool):
    """d(block loss)/d(zi, zc, scale, bias) without keeping anything for later."""
    logits = scale * zi @ zc.T + bias
    z = (2 * jnp.eye(zi.shape[0], dtype=logits.dtype) - 1) if home else -1.0
    g = -z * jax.nn.sigmoid(-z * logits)                  # d(-log_sigmoid(z * l)) / dl
    return scale * g @ zc, scale * g.T @ zi, jnp.sum(g * (zi @ zc.T)), jnp.sum(g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def sigmoid_ring(zi, zt, scale, bias, axis, n):
    """(sum over my images and all B texts of the sigmoid loss, metric sums) for this shard."""
    return _sigmoid_ring_fwd(zi, zt, scale, bias, axis, n)[0]


def _sigmoid_ring_fwd(zi, zt, scale, bias, axis, n):
    logits, loss = _sigmoid_block(zi, zt, scale, bias, True)
    pos = jnp.diagonal(logits)
    col_max = logits.max(axis=0)                          # travels with the chunk: best image
    stats = {"pos": pos.sum(), "sum": logits.sum(), "row_max": logits.max(axis=1)}

    def hop(carry, _):
        loss, stats, zc, col_max = carry
        zc, col_max = _shift((zc, col_max), axis, n)
        logits, block_loss = _sigmoid_block(zi, zc, scale, bias, False)
        stats = {"pos": stats["pos"], "sum": stats["sum"] + logits.sum(),
                 "row_max": jnp.maximum(stats["row_max"], logits.max(axis=1))}
        return (loss + block_loss, stats, zc, jnp.maximum(col_max, logits.max(axis=0))), None

    (loss, stats, _, col_max), _ = jax.lax.scan(hop, (loss, stats, zt, col_max), None, length=n - 1)
    col_max = _shift(col_max, axis, n)                    # home: the best image for my texts
    metrics = {"pos_sum": stats["pos"], "neg_sum": stats["sum"] - stats["pos"],
               "i2t_correct": jnp.sum(pos >= stats["row_max"]),
               "t2i_correct": jnp.sum(pos >= col_max)}
    return (loss, jax.lax.stop_gradient(metrics)), (zi, zt, scale, bias)


def _sigmoid_ring_bwd(axis, n, res, cts):
    zi, zt, scale, bias = res
    ct = cts[0]                                           # metrics are not differentiated
    gi, gc, gs, gb = _sigmoid_block_grads(zi, zt, scale, bias, True)

    def hop(carry, _):
        gi, gs, gb, zc, gc = carry
        zc, gc = _shift((zc, gc), axis, n)
        di, dc, ds, db = _sigmoid_block_grads(zi, zc, scale, bias, False)
        return (gi + di, gs + ds, gb + db, zc, gc + dc), None

    (gi, gs, gb, _, gc), _ = jax.lax.scan(hop, (gi, gs, gb, zt, gc), None, length=n - 1)
    gc = _shift(gc, axis, n)       # after n - 1 hops the accumulator is one hop from its owner
    return ct * gi, ct * gc, ct * gs, ct * gb


sigmoid_ring.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)


# ----------------------------------------------------------------------------- softmax

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def softmax_ring(zi, zt, scale, axis, n):
    """(sum over my positives of 0.5 * (CE_row + CE_col), metric sums) for this shard."""
    return _softmax_ring_fwd(zi, zt, scale, axis, n)[0]


def _softmax_ring_fwd(zi, zt, scale, axis, n):
    logits = scale * zi @ zt.T
    pos = jnp.diagonal(logits)
    lse_i = jax.nn.logsumexp(logits, axis=1)              # my images over texts seen so far
    lse_c = jax.nn.logsumexp(logits, axis=0)              # travels: the chunk's texts over images
    col_max = logits.max(axis=0)
    stats = {"sum": logits.sum(), "row_max": logits.max(axis=1)}

    def hop(carry, _):
        lse_i, stats, zc, lse_c, col_max = carry
        zc, lse_c, col_max = _shift((zc, lse_c, col_max), axis, n)
        logits = scale * zi @ zc.T
        lse_i = jnp.logaddexp(lse_i, jax.nn.logsumexp(logits, axis=1))
        lse_c = jnp.logaddexp(lse_c, jax.nn.logsumexp(logits, axis=0))
        stats = {"sum": stats["sum"] + logits.sum(),
                 "row_max": jnp.maximum(stats["row_max"], logits.max(axis=1))}
        return (lse_i, stats, zc, lse_c, jnp.maximum(col_max, logits.max(axis=0))), None

    (lse_i, stats, _, lse_c, col_max), _ = jax.lax.scan(
        hop, (lse_i, stats, zt, lse_c, col_max), None, length=n - 1)
    lse_t, col_max = _shift((lse_c, col_max), axis, n)    # home: full normalisers of my texts
    loss = 0.5 * (jnp.sum(lse_i - pos) + jnp.sum(lse_t - pos))
    metrics = {"pos_sum": pos.sum(), "neg_sum": stats["sum"] - pos.sum(),
               "i2t_correct": jnp.sum(pos >= stats["row_max"]),
               "t2i_correct": jnp.sum(pos >= col_max)}
    return (loss, jax.lax.stop_gradient(metrics)), (zi, zt, scale, lse_i, lse_t)


def _softmax_block_grads(zi, zc, scale, lse_i, lse_c, home: bool):
    """d(0.5 * (CE_row + CE_col))/d(zi, zc, scale) for one block, from the final normalisers."""
    sim = zi @ zc.T
    logits = scale * sim
    g = 0.5 * (jnp.exp(logits - lse_i[:, None]) + jnp.exp(logits - lse_c[None, :]))
    if home:
        g = g - jnp.eye(zi.shape[0], dtype=g.dtype)        # the positives' -logit terms
    return scale * g @ zc, scale * g.T @ zi, jnp.sum(g * sim)


def _softmax_ring_bwd(axis, n, res, cts):
    zi, zt, scale, lse_i, lse_t = res
    ct = cts[0]
    gi, gc, gs = _softmax_block_grads(zi, zt, scale, lse_i, lse_t, True)

    def hop(carry, _):
        gi, gs, zc, lse_c, gc = carry
        zc, lse_c, gc = _shift((zc, lse_c, gc), axis, n)
        di, dc, ds = _softmax_block_grads(zi, zc, scale, lse_i, lse_c, False)
        return (gi + di, gs + ds, zc, lse_c, gc + dc), None

    (gi, gs, _, _, gc), _ = jax.lax.scan(hop, (gi, gs, zt, lse_t, gc), None, length=n - 1)
    gc = _shift(gc, axis, n)
    return ct * gi, ct * gc, ct * gs


softmax_ring.defvjp(_softmax_ring_fwd, _softmax_ring_bwd)
