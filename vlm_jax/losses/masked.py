"""Masked language modelling (BERT/ALBEF) and masked image modelling (MAE): the masking and the
losses, as pure functions of global (possibly sharded) arrays.

Random draws are elementwise over the global array shape, so under `jax.jit` they do not depend
on how the batch is sharded (JAX's random bits are partitionable): the same seed masks the same
tokens and patches on 1 or 8 devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mlm_mask(rng, tokens, mask, *, mask_id: int, vocab_size: int, first_regular: int = 0,
             keep=(), rate: float = 0.15):
    """(inputs, chosen): `rate` of the real tokens are chosen (never ids in `keep`, e.g. BOS and
    EOS); of those 80% become `mask_id`, 10% a random id in [first_regular, vocab_size), 10%
    stay. `chosen` marks the positions the loss predicts (the original ids are the targets)."""
    k_choose, k_kind, k_rand = jax.random.split(rng, 3)
    candidates = mask
    for i in keep:
        candidates = candidates & (tokens != i)
    chosen = candidates & (jax.random.uniform(k_choose, tokens.shape) < rate)
    kind = jax.random.uniform(k_kind, tokens.shape)
    random_ids = jax.random.randint(k_rand, tokens.shape, first_regular, vocab_size, tokens.dtype)
    inputs = jnp.where(chosen & (kind < 0.8), mask_id,
                       jnp.where(chosen & (kind >= 0.9), random_ids, tokens))
    return inputs, chosen


def vocab_logits(states, kernel, bias, dtype=jnp.float32):
    """`states @ kernel + bias`, computed in `dtype` (as a Dense layer would), in float32."""
    return (jnp.dot(states.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)
            ).astype(jnp.float32)


def vocab_nll(states, kernel, bias, targets, *, dtype=jnp.float32, chunk: int | None = None):
    """Per-token (nll [B, L] float32, hit [B, L] bool: the argmax is the target) of the logits
    `states @ kernel + bias` ([B, L, D] @ [D, V], computed in `dtype`, then float32) against
    `targets` [B, L], never holding the [B, L, V] logits at once: the positions go in chunks of
    `chunk` (default 2^18 / V: eight at a 32k vocabulary), and each chunk's logits are recomputed
    in the backward pass. A whole batch's logits at a 32k vocabulary are 8 MB per example in
    float32, and their log-softmax and cotangent as much again."""
    b, length, d = states.shape
    c = min(length, chunk or max(1, 2**18 // kernel.shape[1]))
    n = -(-length // c)
    pad = n * c - length
    x = jnp.pad(states, ((0, 0), (0, pad), (0, 0)))
    t = jnp.pad(targets.astype(jnp.int32), ((0, 0), (0, pad)))
    chunks = lambda a: jnp.moveaxis(a.reshape((b, n, c) + a.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(xt):
        xc, tc = xt
        logits = vocab_logits(xc, kernel, bias, dtype)
        target = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target, jnp.argmax(logits, -1) == tc

    nll, hit = jax.lax.map(one, (chunks(x), chunks(t)))
    unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, n * c)[:, :length]
    return unchunk(nll), unchunk(hit)


def token_loss(nll, hit, weights) -> tuple[jax.Array, dict]:
    """The mean of the per-token `nll` over the positions `weights` marks (MLM's chosen tokens,
    a captioner's real next tokens), in the whole batch, and the accuracy there."""
    w = weights.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    loss = (nll * w).sum() / n
    acc = (hit * w).sum() / n
    return loss, {"loss": loss, "accuracy": acc, "chosen_fraction": w.mean()}


def patchify(images, patch: int):
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def patch_mask(rng, batch: int, num_patches: int, ratio: float = 0.75):
    """(visible indices [B, n_keep], masked [B, N] bool): exactly round(N * (1 - ratio))
    patches kept per image (at least one), a uniform random subset for each (MAE's shuffle;
    FLIP's patch dropout)."""
    n_keep = max(1, int(round(num_patches * (1 - ratio))))
    order = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1)
    visible = jnp.sort(order[:, :n_keep], axis=1)
    masked = jnp.ones((batch, num_patches), bool).at[jnp.arange(batch)[:, None], visible].set(False)
    return visible, masked


def mim_loss(pred, images, masked, patch: int, norm_pix: bool = True) -> tuple[jax.Array, dict]:
    """MSE between predicted and true patches (each normalised by its own mean and variance when
    `norm_pix`), averaged over pixels, then over the masked patches of the whole batch."""
    target = patchify(images.astype(jnp.float32), patch)
    if norm_pix:
        mu = target.mean(-1, keepdims=True)
        var = target.var(-1, keepdims=True)
        target = (target - mu) / jnp.sqrt(var + 1e-6)
    per_patch = ((pred.astype(jnp.float32) - target) ** 2).mean(-1)
    w = masked.astype(jnp.float32)
    loss = (per_patch * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, {"loss": loss, "masked_fraction": w.mean()}
