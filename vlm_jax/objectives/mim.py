"""MAE: the image tower sees (1 - ratio) of the patches; the decoder predicts the rest
(losses/masked.py)."""
from __future__ import annotations

import dataclasses

from vlm_jax.config import ConfigError
from vlm_jax.losses.masked import mim_loss, patch_mask
from vlm_jax.models.vlm import PIXEL_NORMS, pixel_stats, pixels


@dataclasses.dataclass(frozen=True)
class Objective:
    patch: int
    ratio: float = 0.75
    norm_pix: bool = True
    pixel_norm: tuple = PIXEL_NORMS["unit"]     # (mean, std)
    name = "mim"
    cross_example = False
    reads = ()
    heads = ("mim_pixels",)

    @classmethod
    def from_config(cls, config, tokenizer=None):
        return cls(config.model.image.patch_size, config.mim.ratio, config.mim.norm_pix,
                   pixel_stats(config))

    @staticmethod
    def check(config) -> None:
        if not 0 < config.mim.ratio < 1:
            raise ConfigError(f"'mim.ratio' must lie strictly between 0 and 1, "
                              f"got {config.mim.ratio}")

    def __call__(self, out: dict, batch: dict, ctx):
        images = batch["image"]
        n = (images.shape[1] // self.patch) * (images.shape[2] // self.patch)
        visible, masked = patch_mask(ctx.rng, images.shape[0], n, self.ratio)
        pred = ctx.call("mim_pixels", images, visible)
        return mim_loss(pred, pixels(images, self.pixel_norm), masked, self.patch, self.norm_pix)
