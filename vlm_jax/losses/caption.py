"""Captioning (CoCa): next-token cross-entropy of a causal decoder, padding ignored."""
from __future__ import annotations

import jax

from vlm_jax.losses.masked import token_loss


def caption_loss(nll, hit, mask) -> tuple[jax.Array, dict]:
    """Per-token nll and hit [B, L - 1] where position t scores tokens[t + 1] (VocabHead given
    the next tokens); the targets are the real tokens after the first (BOS is given, never
    predicted). Mean over every target token of the batch."""
    loss, m = token_loss(nll, hit, mask[:, 1:])
    return loss, {"loss": loss, "accuracy": m["accuracy"]}
