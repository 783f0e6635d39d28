"""Masked prediction (TIPS): the student's image tower sees each image with a share of its
patch embeddings replaced by a mask token and predicts, for every masked patch, the EMA
teacher's feature of that patch (the teacher sees the whole image). The loss is the cosine
distance 1 - cos(prediction, teacher feature), averaged over the masked patches of the batch.
TIPS (after iBOT) compares softmax distributions over learned prototypes instead; the cosine
form needs no prototypes or centring, and the contrastive loss beside it keeps the features
from collapsing. Needs the teacher (`teacher.momentum` > 0)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vlm_jax.config import ConfigError
from vlm_jax.losses.masked import patch_mask


def cosine_distance_loss(pred, target, masked) -> tuple[jax.Array, dict]:
    """Mean of 1 - cos(pred, target) [B, N, D] over the `masked` [B, N] patches."""
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    cos = jnp.sum(unit(pred.astype(jnp.float32)) * unit(target.astype(jnp.float32)), axis=-1)
    w = masked.astype(jnp.float32)
    loss = jnp.sum((1 - cos) * w) / jnp.maximum(w.sum(), 1.0)
    return loss, {"loss": loss, "cosine": 1 - loss}


@dataclasses.dataclass(frozen=True)
class Objective:
    patch: int
    ratio: float = 0.5
    name = "masked_prediction"
    cross_example = False
    reads = ()
    heads = ("masked_patches",)

    @classmethod
    def from_config(cls, config, tokenizer=None):
        return cls(config.model.image.patch_size, config.masked_prediction.ratio)

    @staticmethod
    def check(config) -> None:
        if config.teacher.momentum <= 0:
            raise ConfigError("'masked_prediction.weight' > 0 needs the EMA teacher "
                              "(teacher.momentum > 0): it predicts the teacher's patch features")
        if not 0 < config.masked_prediction.ratio < 1:
            raise ConfigError("'masked_prediction.ratio' must lie strictly between 0 and 1, "
                              f"got {config.masked_prediction.ratio}")

    def __call__(self, out: dict, batch: dict, ctx):
        images = batch["image"]
        n = (images.shape[1] // self.patch) * (images.shape[2] // self.patch)
        _, masked = patch_mask(ctx.rng, images.shape[0], n, self.ratio)     # `ratio` of them masked
        pred = ctx.call("masked_patches", images, masked)
        target = ctx.teacher("encode_image", images)["img/tokens"][:, -n:]
        return cosine_distance_loss(pred, target, masked)
