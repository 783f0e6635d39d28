"""Next-token cross-entropy of a decoder-only LM on chosen tokens (big_vision's PaliGemma and
text-only pretraining alike)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALISATIONS = ("token", "example")


def next_token_loss(logits, tokens, loss_mask, normalise: str = "token") -> tuple[jax.Array, dict]:
    """logits [B, T, V] where position t predicts tokens[t + 1]; `loss_mask` [B, T] marks the
    target tokens that count (a suffix, the real text; position 0 is never a target).

    `token`: the mean over every counted token of the batch (long texts weigh more);
    `example`: each example's mean over its counted tokens, then the mean over the examples
    that have any (big_vision's PaliGemma)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"next-token normalisation {normalise!r}; choose one of "
                         f"{NORMALISATIONS}")
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    targets = tokens[:, 1:]
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    hit = (jnp.argmax(logp, -1) == targets).astype(jnp.float32)
    w = loss_mask[:, 1:].astype(jnp.float32)
    if normalise == "token":
        n = jnp.maximum(w.sum(), 1.0)
        loss, accuracy = (nll * w).sum() / n, (hit * w).sum() / n
    else:
        per = jnp.maximum(w.sum(1), 1.0)
        has = (w.sum(1) > 0).astype(jnp.float32)
        k = jnp.maximum(has.sum(), 1.0)
        loss = ((nll * w).sum(1) / per * has).sum() / k
        accuracy = ((hit * w).sum(1) / per * has).sum() / k
    return loss, {"loss": loss, "accuracy": accuracy, "perplexity": jnp.exp(loss),
                  "tokens": w.sum()}
