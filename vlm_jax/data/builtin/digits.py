"""The 1,797 real 8x8 handwritten digits that scikit-learn ships, as captioned RGB images.

Images are upsampled bilinearly to 32x32 RGB. Each example keeps six captions from templates;
training samples one per step and zero-shot classification averages over all six. The split is
fixed: a seed-0 permutation, the first 1,437 for train and the last 360 for test.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vlm_jax.data import records

VERSION = "1.0.0"
SIZE = 32
NUM_TEST = 360
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a photo of the number {word}.",
    "handwritten {digit}",
    "the digit {word}",
    "a blurry {word}",
    "a drawing of a {digit}",
    "{word}",
)
CLASSES = tuple({"word": w, "digit": str(i)} for i, w in enumerate(WORDS))


def captions(label: int) -> list[str]:
    return [t.format(**CLASSES[label]) for t in TEMPLATES]


def _image(pixels: np.ndarray) -> np.ndarray:
    gray = Image.fromarray((pixels / 16.0 * 255).round().astype(np.uint8))
    return np.asarray(gray.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB"), np.uint8)


def prepare(out_dir: str) -> dict:
    from sklearn.datasets import load_digits  # the data ships inside the wheel: no network
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    splits = {"train": order[:-NUM_TEST], "test": order[-NUM_TEST:]}
    sizes = {}
    for split, idx in splits.items():
        sizes[split] = records.write(os.path.join(out_dir, f"{split}.array_record"), (
            {"image": records.encode_png(_image(d.images[i])), "label": int(d.target[i]),
             "captions": captions(int(d.target[i])), "id": int(i)} for i in idx))
    return {"name": "digits", "version": VERSION, "image_size": SIZE, "splits": sizes,
            "classes": list(CLASSES), "templates": list(TEMPLATES)}
