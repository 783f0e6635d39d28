"""Image-text matching (ALBEF): hard negatives mined from the contrastive similarities, and the
2-class loss over positives and negatives.

For each image a negative text is drawn with probability softmax(s * x_i . y_j) over texts j,
its own caption excluded; for each text a negative image likewise. `global` mining draws from
all B examples of the batch (embeddings all-gathered), `local` from the shard's own b.

Draws use the Gumbel-max trick with noise seeded by the global row index, so global mining gives
the same negatives for the same seed whatever the number of devices.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from vlm_jax.parallel import sharding


def threefry(rng):
    """A threefry key from any key. Inside shard_map, RngBitGenerator-based keys (rbg) give
    each device different bits for the same key; threefry's bits depend on key and counter only."""
    data = jax.random.key_data(rng).ravel()
    return jax.random.wrap_key_data(data[:2].astype(jnp.uint32), impl="threefry2x32")


def _draw(rng, sim, rows, cols_offset, same):
    """Row r of `sim` ([b, M]) -> one column drawn ∝ softmax(sim[r]) excluding column
    rows[r] - cols_offset (the positive) and the columns where `same` [b, M] holds; noise
    seeded by the global row index rows[r]."""
    noise = jax.vmap(lambda r: jax.random.gumbel(jax.random.fold_in(rng, r), sim.shape[1:]))(rows)
    positive = jnp.arange(sim.shape[1])[None, :] == (rows - cols_offset)[:, None]
    return jnp.argmax(jnp.where(positive | same, -jnp.inf, sim.astype(jnp.float32) + noise), axis=1)


def mine_negatives(rng, zimg, ztxt, scale, *, negatives: str = "global", mesh: Mesh | None = None,
                   batch_axes: Sequence[str] = ("data",), groups=None, views=None):
    """(negative text index per image, negative image index per text), each [B] int32 indices
    into the global batch. Embeddings are L2-normalised [B, D]; no gradient flows through.
    `groups` [B] ints (e.g. a hash of the caption): examples of one group are never drawn as
    each other's negatives, so a caption shared by two images is not a 'non-match' of either.
    `views` [B] ints: nor are examples of different views (a caption without colours, of an
    image shown without its own, may be true of a coloured one: data.grayscale, hue_shift)."""
    if negatives not in ("local", "global"):
        raise ValueError(f"unknown ITM negatives {negatives!r}; choose local or global")
    zimg, ztxt, scale = (jax.lax.stop_gradient(x) for x in (zimg, ztxt, scale))
    k_txt, k_img = jax.random.split(threefry(rng))
    axes = tuple(batch_axes) if mesh is not None else None
    if groups is None:
        groups = jnp.arange(zimg.shape[0], dtype=jnp.int32)
    # Group and view travel together: one all-gather.
    keys = jnp.stack([groups.astype(jnp.int32), jnp.zeros_like(groups, jnp.int32)
                      if views is None else views.astype(jnp.int32)], axis=-1)

    def body(zi, zt, g, s):
        b = zi.shape[0]
        shard = 0 if axes is None else jax.lax.axis_index(axes)
        rows = shard * b + jnp.arange(b)
        if negatives == "global" and axes is not None:
            gather = lambda x: jax.lax.all_gather(x, axes, axis=0, tiled=True)
            # Gathered once: without the barrier the TPU compiler gathers the embeddings again
            # for each use (5 all-gathers for 3 in this program compiled for v5e-4).
            all_i, all_t, all_g = jax.lax.optimization_barrier((gather(zi), gather(zt), gather(g)))
            offset = 0
        else:
            all_i, all_t, all_g, offset = zi, zt, g, shard * b
        same = ((g[:, None, 0] == all_g[None, :, 0]) | (g[:, None, 1] != all_g[None, :, 1]))
        neg_txt = _draw(k_txt, s * zi @ all_t.T, rows, offset, same) + offset
        neg_img = _draw(k_img, s * zt @ all_i.T, rows, offset, same) + offset
        return neg_txt.astype(jnp.int32), neg_img.astype(jnp.int32)

    if mesh is None:
        return body(zimg, ztxt, keys, scale)
    n = sharding.shards(mesh, axes)
    if zimg.shape[0] % n:
        raise ValueError(f"global batch {zimg.shape[0]} is not divisible by {n} shards")
    spec = P(axes)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, P()),
                         out_specs=(spec, spec))(zimg, ztxt, keys, scale)


def itm_loss(logits_pos, logits_neg_txt, logits_neg_img, own=None) -> tuple[jax.Array, dict]:
    """2-class cross-entropy, mean over the b positives, b (image, negative text) and b
    (negative image, text) pairs; class 1 is 'matches'. Each logits array is [b, 2]. `own` [b]
    marks the negative texts that are the image's own negative captions: their accuracy is
    `own_accuracy` (0 when there are none)."""
    logits = jnp.concatenate([logits_pos, logits_neg_txt, logits_neg_img]).astype(jnp.float32)
    b = logits_pos.shape[0]
    labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
    logp = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()
    hit = jnp.argmax(logits, -1) == labels
    out = {"loss": loss, "accuracy": hit.mean()}
    if own is not None:
        w = own.astype(jnp.float32)
        out["own_accuracy"] = (hit[b:2 * b] * w).sum() / jnp.maximum(w.sum(), 1.0)
        out["own_share"] = w.mean()
    return loss, out
