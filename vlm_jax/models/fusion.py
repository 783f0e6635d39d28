"""The fusion encoder (ALBEF/BLIP): text tokens attend to each other (padding masked) and, in
every block, to the image tokens through cross-attention. Its first token feeds the ITM head;
every token feeds the MLM head. Made causal, the same stack is CoCa's multimodal text decoder
(the captioner)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.losses.masked import vocab_logits, vocab_nll
from vlm_jax.models.text import attention_mask
from vlm_jax.models.transformer import Dtype, layer_norm, logical, stack


class FusionEncoder(nn.Module):
    depth: int
    heads: int
    mlp_dim: int
    causal: bool = False
    dtype: Dtype = jnp.float32
    remat: str = "none"
    scan: bool = False

    @nn.compact
    def __call__(self, text, text_mask, image) -> dict:
        """text [B, L, D] token states with mask [B, L]; image [B, N, Di] tokens.
        Returns {'tokens' [B, L, D], 'cls' [B, D], 'block<i>'... (looped only)}."""
        self_mask = attention_mask(text_mask.astype(bool), self.causal)
        x, out = stack(text, depth=self.depth, heads=self.heads, mlp_dim=self.mlp_dim,
                       dtype=self.dtype, remat=self.remat, scan=self.scan, mask=self_mask,
                       context=image)
        x = layer_norm("ln_final", self.dtype)(x)
        return {**out, "tokens": x, "cls": x[:, 0]}


class ItmHead(nn.Module):
    """Fusion [CLS] state -> 2 logits (no match, match), float32. The kernel starts random
    (BERT's N(0, 0.02), as ALBEF's): a zero kernel passes no gradient back to the fusion
    encoder, whose [CLS] then never learns to tell pairs apart, and ITM stays at its prior."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cls):
        return nn.Dense(2, dtype=self.dtype, name="dense",
                        kernel_init=logical(nn.initializers.normal(0.02), ("embed", None)),
                        bias_init=logical(nn.initializers.zeros, (None,)))(cls).astype(jnp.float32)


class _Weights(nn.Module):
    """A Dense layer's params without the layer (the vocabulary decoder's kernel and bias), for
    the head to use both ways."""
    features: int

    @nn.compact
    def __call__(self, inputs: int):
        return (self.param("kernel", logical(nn.initializers.xavier_uniform(), ("embed", "vocab")),
                           (inputs, self.features)),
                self.param("bias", logical(nn.initializers.zeros, ("vocab",)), (self.features,)))


class VocabHead(nn.Module):
    """Token states -> vocabulary logits (BERT's transform, LayerNorm, decoder): MLM and
    captioning. Given `targets`, the per-token (nll, hit) instead, without ever holding the
    [B, L, vocab] logits (losses/masked.py: vocab_nll)."""
    vocab_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, targets=None):
        x = nn.Dense(tokens.shape[-1], dtype=self.dtype, name="transform",
                     kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros, ("mlp",)))(tokens)
        x = layer_norm("ln", self.dtype)(nn.gelu(x))
        kernel, bias = _Weights(self.vocab_size, name="decoder")(x.shape[-1])
        if targets is not None:
            return vocab_nll(x, kernel, bias, targets, dtype=self.dtype)
        return vocab_logits(x, kernel, bias, self.dtype)
