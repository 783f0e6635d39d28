"""Captioning (CoCa): next-token cross-entropy of a causal decoder, padding ignored."""
from __future__ import annotations

import jax

from vlm_jax.losses.masked import mlm_loss


def caption_loss(logits, tokens, mask) -> tuple[jax.Array, dict]:
    """logits [B, L, V] where position t predicts tokens[t + 1]; targets are the real tokens
    after the first (BOS is given, never predicted). Mean over every target token of the batch:
    MLM's cross-entropy over chosen positions, with every real next token chosen."""
    loss, m = mlm_loss(logits[:, :-1], tokens[:, 1:], mask[:, 1:])
    return loss, {"loss": loss, "accuracy": m["accuracy"]}
