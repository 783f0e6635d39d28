"""Decoders that exist only for an objective: the MAE pixel decoder (MIM)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models.transformer import Dtype, Encoder, logical
from vlm_jax.models.vit import sincos_2d


class MaeDecoder(nn.Module):
    """Visible patch tokens -> pixels of every patch (MAE): project to a narrow width, put a
    learned mask token at every hidden position, add fixed 2-D position embeddings, run a few
    blocks, predict each patch's p*p*C values."""
    grid: tuple[int, int]           # patches per column and per row
    patch_dim: int                  # p * p * C
    width: int
    depth: int
    heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    remat: str = "none"      # a jax.checkpoint_policies name (transformer.REMAT_POLICIES)
    scan: bool = False

    @nn.compact
    def __call__(self, tokens, visible):
        """tokens [B, n, D] of the patches `visible` [B, n] -> [B, N, patch_dim] float32."""
        b, n_patches = tokens.shape[0], self.grid[0] * self.grid[1]
        x = nn.Dense(self.width, dtype=self.dtype, name="embed",
                     kernel_init=logical(nn.initializers.xavier_uniform(), (None, "embed")),
                     bias_init=logical(nn.initializers.zeros, ("embed",)))(tokens)
        mask_token = self.param("mask_token", logical(nn.initializers.normal(0.02), (None, "embed")),
                                (1, self.width))
        full = jnp.broadcast_to(mask_token.astype(x.dtype), (b, n_patches, self.width))
        full = full.at[jnp.arange(b)[:, None], visible].set(x)
        full = full + jnp.asarray(sincos_2d(*self.grid, self.width)).astype(x.dtype)[None]
        y, _ = Encoder(self.depth, self.heads, self.mlp_dim, self.dtype, self.remat,
                              self.scan, name="encoder")(full)
        return nn.Dense(self.patch_dim, dtype=self.dtype, name="pixels",
                        kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", None)),
                        bias_init=logical(nn.initializers.zeros, (None,)))(y).astype(jnp.float32)
