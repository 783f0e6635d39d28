"""Assembles a model from the config: towers, projections, and the heads its objectives need.

`apply` returns a flat dict keyed by name ('img/embed', 'img/tokens', 'txt/normed', 'scale', ...),
so objectives and evaluators pick what they need and a new head never changes a signature.
The heads beyond the contrastive ones are methods (`itm_logits`, `mlm_logits`, `mim_pixels`,
`caption_logits`) that objectives call with `apply(..., method=name)` on the tower outputs.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vlm_jax.data.regions import extra_tokens
from vlm_jax.models.decoders import MaeDecoder
from vlm_jax.models.fusion import FusionEncoder, ItmHead, VocabHead
from vlm_jax.models.heads import ContrastiveScale, PatchHead, Projection
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


def pixel_stats(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the config's pixel normalisation: model.image.pixel_mean/pixel_std where
    set, else pixel_norm's."""
    i = config.model.image
    if i.pixel_mean:
        return tuple(map(float, i.pixel_mean)), tuple(map(float, i.pixel_std))
    return PIXEL_NORMS[i.pixel_norm]


def pixels(images, pixel_norm="unit"):
    """uint8 pixels straight from the pipeline -> normalised floats; floats pass through.
    `pixel_norm`: a name of PIXEL_NORMS or (mean, std)."""
    if not jnp.issubdtype(images.dtype, jnp.integer):
        return images
    stats = PIXEL_NORMS[pixel_norm] if isinstance(pixel_norm, str) else pixel_norm
    mean, std = (jnp.asarray(v, jnp.float32) for v in stats)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


class VisionLanguageModel(nn.Module):
    img: ViT
    txt: TextTransformer
    embed_dim: int
    scale: ContrastiveScale
    dtype: Dtype = jnp.float32
    pixel_norm: tuple = PIXEL_NORMS["unit"]     # (mean, std), pixel_stats(config)
    fusion: FusionEncoder | None = None         # ITM and MLM
    itm: bool = False
    mlm_vocab: int = 0                          # 0: no MLM head
    mim_decoder: MaeDecoder | None = None
    caption_decoder: FusionEncoder | None = None
    caption_vocab: int = 0
    patch_prediction: bool = False  # the mask token and the head predicting patch features
    proj_bias: bool = False

    def setup(self):
        self.img_proj = Projection(self.embed_dim, self.dtype, self.proj_bias)
        self.txt_proj = Projection(self.embed_dim, self.dtype, self.proj_bias)
        if self.itm:
            self.itm_head = ItmHead(self.dtype)
        if self.mlm_vocab:
            self.mlm_head = VocabHead(self.mlm_vocab, self.dtype)
        if self.caption_decoder is not None:
            self.caption_head = VocabHead(self.caption_vocab, self.dtype)
        if self.patch_prediction:
            self.patch_head = PatchHead(self.dtype)

    def encode_image(self, images, visible=None):
        """`visible` [B, n]: the patches the tower sees (patch dropout); None: every patch."""
        out = self.img(pixels(images, self.pixel_norm), visible)
        return _embed("img", out, self.img_proj(out["pre_logits"]).astype(jnp.float32))

    def encode_text(self, tokens, mask):
        out = self.txt(tokens, mask)
        return _embed("txt", out, self.txt_proj(out["pre_logits"]).astype(jnp.float32))

    def __call__(self, images, tokens, mask, visible=None):
        out = {**self.encode_image(images, visible), **self.encode_text(tokens, mask),
               **self.scale()}
        if self.is_initializing():      # create every head's params
            img, txt = out["img/tokens"], out["txt/tokens"]
            if self.itm:
                self.itm_logits(txt, mask, img)
            if self.mlm_vocab:
                self.mlm_logits(tokens, mask, img)
            if self.mim_decoder is not None:
                n = self.mim_decoder.grid[0] * self.mim_decoder.grid[1]
                self.mim_pixels(images, jnp.broadcast_to(jnp.arange(n), (images.shape[0], n)))
            if self.caption_decoder is not None:
                self.caption_logits(txt, mask, img)
            if self.patch_prediction:
                n = img.shape[1] if self.img.pool != "cls" else img.shape[1] - 1
                self.masked_patches(images, jnp.zeros((images.shape[0], n), bool))
        return out

    def has_head(self, method: str) -> bool:
        """Whether the head behind `method` exists (its objective is on)."""
        return {"itm_logits": self.itm, "mlm_logits": bool(self.mlm_vocab),
                "mim_pixels": self.mim_decoder is not None,
                "masked_patches": self.patch_prediction,
                "caption_logits": self.caption_decoder is not None}.get(method, hasattr(self, method))

    def itm_logits(self, txt_tokens, txt_mask, img_tokens):
        """Text tower tokens and image tower tokens of matched rows -> [B, 2] (no, yes)."""
        return self.itm_head(self.fusion(txt_tokens, txt_mask, img_tokens)["cls"])

    def mlm_logits(self, tokens, mask, img_tokens, targets=None):
        """Masked token ids -> [B, L, vocab], read through the text tower and the fusion encoder;
        given `targets` [B, L], the per-token (nll, hit) instead (VocabHead)."""
        txt = self.txt(tokens, mask)["tokens"]
        return self.mlm_head(self.fusion(txt, mask, img_tokens)["tokens"], targets)

    def mim_pixels(self, images, visible):
        """The image tower sees only the `visible` [B, n] patches; -> [B, N, p*p*C] pixels."""
        tokens = self.img(pixels(images, self.pixel_norm), visible)["tokens"]
        return self.mim_decoder(tokens[:, -visible.shape[1]:], visible)

    def masked_patches(self, images, masked):
        """The image tower with the `masked` [B, N] patches' embeddings replaced by the mask
        token -> each patch's predicted feature [B, N, width] (the patch head on its token)."""
        tokens = self.img(pixels(images, self.pixel_norm), masked=masked)["tokens"]
        return self.patch_head(tokens[:, -masked.shape[1]:])

    def caption_logits(self, txt_tokens, txt_mask, img_tokens, targets=None):
        """Causal text tower tokens -> [B, L, vocab]; position t predicts token t + 1. Given the
        next tokens `targets` [B, L - 1], the per-token (nll, hit) of positions 0..L-2 instead."""
        states = self.caption_decoder(txt_tokens, txt_mask, img_tokens)["tokens"]
        if targets is not None:
            states = states[:, :targets.shape[1]]
        return self.caption_head(states, targets)


def build(config: ml_collections.ConfigDict, vocab_size: int,
          heads=frozenset()) -> VisionLanguageModel:
    """The towers from `config.model`, plus the `heads` (method names: itm_logits, mlm_logits,
    mim_pixels, caption_logits) that the enabled objectives declare."""
    m, con = config.model, config.contrastive
    dtype = jnp.dtype(m.dtype)
    # The text tower reads, and the captioner writes, the grounding tasks' tokens too.
    text_vocab = vocab_size + (extra_tokens(config.grounding.bins)
                               if config.grounding.weight > 0 else 0)
    i, t = m.image, m.text
    layers = dict(remat=m.remat, scan=m.scan)
    arch = dict(act=m.act, norm_eps=m.norm_eps)
    fusion = None
    if {"itm_logits", "mlm_logits"} & heads:
        f = m.fusion
        fusion = FusionEncoder(f.depth, f.heads, f.mlp_dim, False, dtype, **layers)
    mim = None
    if "mim_pixels" in heads:
        d, grid = m.mim_decoder, config.data.image_size // i.patch_size
        mim = MaeDecoder((grid, grid), i.patch_size ** 2 * 3, d.width, d.depth, d.heads,
                         d.mlp_dim, dtype, **layers)
    cap = None
    if "caption_logits" in heads:
        c = m.caption_decoder
        cap = FusionEncoder(c.depth, c.heads, c.mlp_dim, True, dtype, **layers)
    return VisionLanguageModel(
        img=ViT(i.patch_size, i.width, i.depth, i.heads, i.mlp_dim, i.pool, i.posemb, dtype,
                **layers, **arch, patch_bias=i.patch_bias, pre_norm=i.pre_norm),
        txt=TextTransformer(text_vocab, config.tokenizer.max_len, t.width, t.depth, t.heads,
                            t.mlp_dim, t.causal, t.pool, dtype, **layers, **arch),
        embed_dim=m.embed_dim,
        scale=ContrastiveScale(con.name, con.softmax_scale_init, con.softmax_scale_max,
                               con.sigmoid_t_init, con.sigmoid_bias_init),
        dtype=dtype, pixel_norm=pixel_stats(config), fusion=fusion, itm="itm_logits" in heads,
        mlm_vocab=vocab_size if "mlm_logits" in heads else 0, mim_decoder=mim,
        caption_decoder=cap, caption_vocab=text_vocab, proj_bias=m.proj_bias,
        patch_prediction="masked_patches" in heads)
