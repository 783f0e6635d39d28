"""Position embeddings that follow the input size: a checkpoint's learned embeddings fitted to a
model with another image size, patch grid or text length (CLIPA's stages, a pretrained tower
loaded at another resolution)."""
from __future__ import annotations

import math

import jax
import numpy as np

IMAGE, TEXT = "img/posemb", "txt/posemb"     # the params this applies to (learned embeddings)


def resample_2d(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[h0 * w0, C] learned embeddings of a square h0 x w0 patch grid -> [h * w, C] on `grid`,
    by bilinear interpolation of the grid (half-pixel centres), antialiased when shrinking (a
    triangle filter stretched by the shrink factor, as PIL and FlexiViT do). The same size
    returns the input unchanged."""
    n, width = posemb.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} position embeddings are not a square patch grid")
    if (side, side) == tuple(grid):
        return posemb
    image = np.asarray(posemb, np.float32).reshape(side, side, width)
    out = jax.image.resize(image, (*grid, width), method="bilinear", antialias=True)
    return np.asarray(out, posemb.dtype).reshape(grid[0] * grid[1], width)


def fit_length(posemb: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """[L0, C] text embeddings -> the length of `fresh` [L, C] (the model's initialisation):
    cut to the first L, or the L0 learned ones followed by fresh ones for the new positions."""
    length = fresh.shape[0]
    if posemb.shape[0] >= length:
        return posemb[:length]
    return np.concatenate([posemb, np.asarray(fresh)[posemb.shape[0]:]]).astype(posemb.dtype)


def fit(path: str, value: np.ndarray, fresh) -> np.ndarray | None:
    """A checkpoint's `value` at `path` (the param, or its optimizer moment: `.../img/posemb`)
    fitted to the model's leaf `fresh` (same width), or None when `path` is not a position
    embedding that can be fitted."""
    if value.ndim != 2 or fresh.ndim != 2 or value.shape[1] != fresh.shape[1]:
        return None
    is_ = lambda name: path == name or path.endswith("/" + name)
    if is_(IMAGE):
        side = math.isqrt(fresh.shape[0])
        if side * side == fresh.shape[0]:
            return resample_2d(np.asarray(value), (side, side))
    if is_(TEXT):
        return fit_length(np.asarray(value), jax.device_get(fresh))
    return None
