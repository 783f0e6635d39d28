"""The towers' forward pass on a training batch, shared by the plain and the micro-batched
step, and patch dropout's choice of the patches the image tower sees."""
from __future__ import annotations

import flax.linen as nn
import jax

from vlm_jax.losses.masked import patch_mask

# The step's random streams are fold_in(rng, i): objectives take i = their index (0, 1, ...),
# patch dropout this one, so turning it on leaves every objective's randomness as it was.
PATCH_DROPOUT_STREAM = 1 << 16


def forward(model: nn.Module, params, batch: dict) -> dict:
    """The towers' outputs on a batch; with `visible` in it, the image tower sees only those
    patches."""
    return model.apply({"params": params}, batch["image"], batch["tokens"], batch["mask"],
                       batch.get("visible"))


def drop_patches(model: nn.Module, batch: dict, rng, ratio: float) -> dict:
    """The batch with `visible` [B, n]: a uniform random subset of each image's patches, ratio
    of them dropped (FLIP), drawn once for the whole batch so that micro-batches slice it."""
    images = batch["image"]
    p = model.img.patch_size
    n = (images.shape[1] // p) * (images.shape[2] // p)
    visible, _ = patch_mask(jax.random.fold_in(rng, PATCH_DROPOUT_STREAM), images.shape[0], n,
                            ratio)
    return {**batch, "visible": visible}
