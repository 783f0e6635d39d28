"""Vision Transformer image tower."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.transformer import (Attention, Dtype, Encoder, Mlp, layer_norm, logical,
                                        rematerialised)


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings, [h * w, width]."""
    if width % 4:
        raise ValueError(f"sincos2d position embeddings need width % 4 == 0, got {width}")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class MapHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens."""
    heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    act: str = "gelu_tanh"
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", logical(nn.initializers.xavier_uniform(), (None, None, "embed")),
                           (1, 1, x.shape[-1]))
        probe = jnp.broadcast_to(probe, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        y = Attention(self.heads, self.dtype, name="attn")(probe, kv=x)
        y = y + Mlp(self.mlp_dim, self.dtype, self.act, name="mlp")(
            layer_norm("ln", self.dtype, self.norm_eps)(y))
        return y[:, 0]


class ViT(nn.Module):
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = "gap"        # gap | cls | map
    posemb: str = "learn"    # learn | sincos2d
    dtype: Dtype = jnp.float32
    remat: str = "none"      # a jax.checkpoint_policies name (transformer.REMAT_POLICIES)
    scan: bool = False
    act: str = "gelu_tanh"   # transformer.ACTIVATIONS
    norm_eps: float = 1e-6
    patch_bias: bool = True  # CLIP's patch embedding has none
    pre_norm: bool = False   # CLIP: a LayerNorm on the embedded tokens, before the blocks

    @nn.compact
    def __call__(self, images, visible=None, masked=None):
        """images: [B, H, W, C] floats in [-1, 1]. Returns tokens and the pooled `pre_logits`.
        `visible` [B, n] (patch indices, row-major) keeps only those patches, after their
        position embeddings (MAE's encoder); `masked` [B, N] bools replaces those patches'
        embeddings by a learned mask token, before the position embeddings (iBOT, TIPS). The
        patch tokens are always the last ones."""
        p = self.patch_size
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"image size {images.shape[1:3]} is not divisible by patch {p}")
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="embedding",
                    dtype=self.dtype, use_bias=self.patch_bias,
                    kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                    bias_init=logical(nn.initializers.zeros, ("embed",)))(images.astype(self.dtype))
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if masked is not None:
            token = self.param("mask_token", logical(nn.initializers.normal(0.02),
                                                     (None, None, "embed")), (1, 1, c))
            x = jnp.where(masked[..., None], token.astype(x.dtype), x)
        if self.posemb == "learn":
            pos = self.param("posemb", logical(nn.initializers.normal(0.02), ("seq", "embed")),
                             (h * w, c))
        else:
            pos = jnp.asarray(sincos_2d(h, w, c))
        x = x + pos.astype(x.dtype)[None]
        if visible is not None:
            x = jnp.take_along_axis(x, visible[..., None], axis=1)
        if self.pool == "cls":
            cls = self.param("cls", logical(nn.initializers.zeros, (None, None, "embed")), (1, 1, c))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)).astype(x.dtype), x], axis=1)
        if self.pre_norm:
            x = layer_norm("ln_pre", self.dtype, self.norm_eps, self.remat)(x)
        tokens, blocks = Encoder(self.depth, self.heads, self.mlp_dim, self.dtype, self.remat,
                                 self.scan, self.act, self.norm_eps, name="encoder")(x)
        if self.pool == "gap":
            pooled = tokens.mean(axis=1)
        elif self.pool == "cls":
            pooled = tokens[:, 0]
        else:
            # Rematerialised with the blocks: its keys and values span every token.
            pooled = rematerialised(MapHead, self.remat)(
                self.heads, self.mlp_dim, self.dtype, self.act, self.norm_eps, name="map")(tokens)
        return {"tokens": tokens, "pre_logits": pooled, **{f"encoder/{k}": v for k, v in blocks.items()}}
