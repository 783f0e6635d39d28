"""Text transformer tower with an explicit padding mask.

Pooling reads the true last token by index (from the mask), never a "sticky EOS" convention, so
padding a caption to any length leaves its embedding unchanged.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models.transformer import Dtype, Encoder, logical


def attention_mask(mask, causal: bool):
    """[B, L] token mask -> [B, 1, L, L]: queries attend to real keys (and only earlier ones)."""
    m = mask[:, None, None, :]
    if causal:
        length = mask.shape[1]
        m = m & jnp.tril(jnp.ones((length, length), bool))[None, None]
    return m


def pool(tokens, mask, how: str):
    if how == "first":
        return tokens[:, 0]
    if how == "mean":
        w = mask.astype(tokens.dtype)[..., None]
        return (tokens * w).sum(1) / jnp.maximum(w.sum(1), 1)
    last = jnp.maximum(mask.sum(axis=1) - 1, 0)              # index of the true last token
    return jnp.take_along_axis(tokens, last[:, None, None], axis=1)[:, 0]


class TextTransformer(nn.Module):
    vocab_size: int
    max_len: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    causal: bool = False
    pool: str = "last"       # last | first | mean
    dtype: Dtype = jnp.float32
    remat: str = "none"      # a jax.checkpoint_policies name (transformer.REMAT_POLICIES)
    scan: bool = False
    act: str = "gelu_tanh"   # transformer.ACTIVATIONS
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, tokens, mask):
        """tokens: [B, L] ints; mask: [B, L] bools, True on real tokens (a prefix)."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"text length {tokens.shape[1]} exceeds max_len {self.max_len}")
        x = nn.Embed(self.vocab_size, self.width, name="embedding", dtype=self.dtype,
                     embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")))(tokens)
        pos = self.param("posemb", logical(nn.initializers.normal(0.01), ("seq", "embed")),
                         (self.max_len, self.width))
        x = x + pos[: tokens.shape[1]].astype(x.dtype)[None]
        mask = mask.astype(bool)
        x, blocks = Encoder(self.depth, self.heads, self.mlp_dim, self.dtype, self.remat,
                            self.scan, self.act, self.norm_eps, name="encoder")(
            x, attention_mask(mask, self.causal))
        return {"tokens": x, "mask": mask, "pre_logits": pool(x, mask, self.pool),
                **{f"encoder/{k}": v for k, v in blocks.items()}}
