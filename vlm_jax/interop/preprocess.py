"""A converted model's eval view and pixel normalisation, as its source library preprocesses:
Hugging Face's `preprocessor_config.json`, open_clip's `preprocess_cfg` (open_clip_config.json)
or open_clip's conventions per model family for a bare checkpoint file."""
from __future__ import annotations

from vlm_jax.models.vlm import PIXEL_NORMS

OPENAI = PIXEL_NORMS["clip"]
IMAGENET = PIXEL_NORMS["imagenet"]
HALF = PIXEL_NORMS["unit"]
# open_clip's pretrained-config conventions (open_clip/pretrained.py): family -> (mean/std,
# interpolation, resize mode).
FAMILIES = {
    "openai": (OPENAI, "bicubic", "shortest"),
    "openclip": (OPENAI, "bicubic", "shortest"),
    "siglip": (HALF, "bicubic", "squash"),
    "siglip2": (HALF, "bicubic", "squash"),
    "clipa": (IMAGENET, "bilinear", "squash"),
    "mobileclip": (((0.0,) * 3, (1.0,) * 3), "bilinear", "shortest"),
    "mobileclip2": (OPENAI, "bilinear", "shortest"),
}
# Hugging Face's `resample` (PIL's filter numbers) -> ours.
HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def keys(stats, interpolation: str, resize: str, crop_fraction: float = 1.0,
         crop_rounding: str = "round") -> dict:
    """Config keys for a view and (mean, std): a named pixel_norm where one matches."""
    mean, std = (tuple(float(v) for v in x) for x in stats)
    named = next((k for k, v in PIXEL_NORMS.items()
                  if all(abs(a - b) < 1e-7 for a, b in zip(v[0] + v[1], mean + std))), None)
    out = {"model.image.interpolation": interpolation, "model.image.resize": resize,
           "model.image.crop_fraction": crop_fraction, "model.image.crop_rounding": crop_rounding}
    if named:
        return {**out, "model.image.pixel_norm": named, "model.image.pixel_mean": (),
                "model.image.pixel_std": ()}
    return {**out, "model.image.pixel_mean": mean, "model.image.pixel_std": std}


def from_family(family: str) -> dict:
    if family not in FAMILIES:
        raise ValueError(f"unknown --preprocess family {family!r}; choose one of "
                         f"{', '.join(FAMILIES)}")
    stats, interpolation, resize = FAMILIES[family]
    return keys(stats, interpolation, resize)


def _triple(x) -> tuple:
    return tuple(x) * 3 if len(tuple(x)) == 1 else tuple(x)


def from_open_clip(cfg: dict) -> dict:
    """open_clip's preprocess_cfg (size, mean, std, interpolation, resize_mode, fill_color)."""
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"preprocess_cfg interpolation {interpolation!r}: only bilinear and "
                         "bicubic convert")
    mean = cfg.get("mean", OPENAI[0])
    std = cfg.get("std", OPENAI[1])
    mean = _triple(mean if isinstance(mean, (list, tuple)) else [mean])
    std = _triple(std if isinstance(std, (list, tuple)) else [std])
    return keys((mean, std), interpolation, cfg.get("resize_mode", "shortest"))


def _edge(size, what: str) -> tuple[str, int]:
    """HF's size dict -> ('shortest', n) or ('square', n)."""
    if isinstance(size, int):
        return "square", size
    if "shortest_edge" in size and len(size) == 1:
        return "shortest", int(size["shortest_edge"])
    if {"height", "width"} == set(size) and size["height"] == size["width"]:
        return "square", int(size["height"])
    raise ValueError(f"preprocessor_config.json {what} {size}: only a shortest edge or a "
                     "square converts")


def from_hf(proc: dict, image_size: int) -> dict:
    """Hugging Face's preprocessor_config.json (CLIPImageProcessor, SiglipImageProcessor)."""
    resample = proc.get("resample", 3)
    if resample not in HF_RESAMPLE:
        raise ValueError(f"preprocessor_config.json resample {resample}: only 2 (bilinear) and "
                         "3 (bicubic) convert")
    if not proc.get("do_resize", True):
        raise ValueError("preprocessor_config.json do_resize is false: images of any size "
                         "cannot be a fixed-size input")
    if proc.get("do_rescale", True) and abs(proc.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ValueError(f"preprocessor_config.json rescale_factor {proc['rescale_factor']}: "
                         "only 1/255 converts")
    mode, n = _edge(proc.get("size", image_size), "size")
    if proc.get("do_center_crop", False):
        _, crop = _edge(proc.get("crop_size", n), "crop_size")
        resize, fraction, final = "shortest", crop / n if mode == "shortest" else 1.0, crop
        if mode == "square" and crop != n:
            raise ValueError(f"preprocessor_config.json: a square resize to {n} then a crop "
                             f"of {crop} does not convert")
    elif mode == "square":
        resize, fraction, final = "squash", 1.0, n
    else:
        raise ValueError("preprocessor_config.json: a shortest-edge resize without a centre "
                         "crop gives images of many shapes")
    if final != image_size:
        raise ValueError(f"preprocessor_config.json makes {final}-pixel images but the vision "
                         f"tower takes {image_size}")
    stats = ((_triple(proc.get("image_mean", HALF[0])), _triple(proc.get("image_std", HALF[1])))
             if proc.get("do_normalize", True) else ((0.0,) * 3, (1.0,) * 3))
    return keys(stats, HF_RESAMPLE[resample], resize, fraction, "floor")
