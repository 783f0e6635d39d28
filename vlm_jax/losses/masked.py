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


def mlm_loss(logits, targets, chosen) -> tuple[jax.Array, dict]:
    """Cross-entropy over the chosen positions only, the mean over all of them in the batch."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = chosen.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    loss = (nll * w).sum() / n
    acc = ((jnp.argmax(logits, -1) == targets) * w).sum() / n
    return loss, {"loss": loss, "accuracy": acc, "chosen_fraction": w.mean()}


def patchify(images, patch: int):
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def mim_mask(rng, batch: int, num_patches: int, ratio: float = 0.75):
    """(visible indices [B, n_keep], masked [B, N] bool): exactly round(N * (1 - ratio))
    patches kept per image, a fresh random subset for each (MAE's shuffle)."""
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
