"""Assembles a model from the config: towers, projections and heads.

`apply` returns a flat dict keyed by name ('img/embed', 'txt/normed', 'scale', ...), so objectives
and evaluators pick what they need and a new head never changes a signature.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vlm_jax.models.heads import ContrastiveScale, Projection
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.transformer import Dtype
from vlm_jax.models.vit import ViT


def _embed(prefix: str, tower_out: dict, embed) -> dict:
    norm = jnp.linalg.norm(embed, axis=-1, keepdims=True)
    out = {f"{prefix}/{k}": v for k, v in tower_out.items()}
    out[f"{prefix}/embed"] = embed
    out[f"{prefix}/norm"] = norm[..., 0]
    # Normalised in float32: the losses compare these at full precision.
    out[f"{prefix}/normed"] = (embed / jnp.maximum(norm, 1e-8)).astype(jnp.float32)
    return out


# Pixel normalisation, done on the device: the pipeline ships uint8 (4x less to transfer).
# (mean, std) per channel on the [0, 1] scale; `unit` maps to [-1, 1].
PIXEL_NORMS = {
    "unit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class TwoTower(nn.Module):
    img: ViT
    txt: TextTransformer
    embed_dim: int
    scale: ContrastiveScale
    dtype: Dtype = jnp.float32
    pixel_norm: str = "unit"

    def setup(self):
        self.img_proj = Projection(self.embed_dim, self.dtype)
        self.txt_proj = Projection(self.embed_dim, self.dtype)

    def encode_image(self, images):
        if jnp.issubdtype(images.dtype, jnp.integer):   # uint8 pixels straight from the pipeline
            mean, std = (jnp.asarray(v, jnp.float32) for v in PIXEL_NORMS[self.pixel_norm])
            images = (images.astype(jnp.float32) / 255.0 - mean) / std
        out = self.img(images)
        return _embed("img", out, self.img_proj(out["pre_logits"]).astype(jnp.float32))

    def encode_text(self, tokens, mask):
        out = self.txt(tokens, mask)
        return _embed("txt", out, self.txt_proj(out["pre_logits"]).astype(jnp.float32))

    def __call__(self, images, tokens, mask):
        return {**self.encode_image(images), **self.encode_text(tokens, mask), **self.scale()}


def build(config: ml_collections.ConfigDict, vocab_size: int) -> TwoTower:
    m, loss = config.model, config.loss
    dtype = jnp.dtype(m.dtype)
    i, t = m.image, m.text
    return TwoTower(
        img=ViT(i.patch_size, i.width, i.depth, i.heads, i.mlp_dim, i.pool, i.posemb, dtype),
        txt=TextTransformer(vocab_size, config.tokenizer.max_len, t.width, t.depth, t.heads,
                            t.mlp_dim, t.causal, t.pool, dtype),
        embed_dim=m.embed_dim,
        scale=ContrastiveScale(loss.name, loss.softmax_scale_init, loss.softmax_scale_max,
                               loss.sigmoid_t_init, loss.sigmoid_bias_init),
        dtype=dtype, pixel_norm=i.pixel_norm)
