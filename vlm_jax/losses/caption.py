"""Captioning (CoCa): next-token cross-entropy of a causal decoder, padding ignored."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def caption_loss(logits, tokens, mask) -> tuple[jax.Array, dict]:
    """logits [B, L, V] where position t predicts tokens[t + 1]; targets are the real tokens
    after the first (BOS is given, never predicted). Mean over every target token of the batch."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = tokens[:, 1:].astype(jnp.int32)
    w = mask[:, 1:].astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    n = jnp.maximum(w.sum(), 1.0)
    loss = (nll * w).sum() / n
    acc = ((jnp.argmax(logp, -1) == targets) * w).sum() / n
    return loss, {"loss": loss, "accuracy": acc}
