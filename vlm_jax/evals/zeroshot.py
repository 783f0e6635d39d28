"""Zero-shot classification with a prompt ensemble: each class is the renormalised mean of its
templates' text embeddings; an image's prediction is the most similar class.

A template is either a format string over the class's fields (the built-in datasets' own, e.g.
"the digit {word}") or holds `{}` for the class name (CLIP's, `templates.CLIP`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def class_name(c: dict) -> str:
    return str(c.get("name", next(iter(c.values()))))


def prompts(classes: list[dict], templates: Sequence[str], names: Sequence[str] = ()) -> list[str]:
    """Every class's prompts, class by class; `names` replaces the classes' own names."""
    if names and len(names) != len(classes):
        raise ValueError(f"{len(names)} class names for {len(classes)} classes")
    out = []
    for i, c in enumerate(classes):
        name = names[i] if names else class_name(c)
        out.extend(t.format(name) if "{}" in t else t.format(**c) for t in templates)
    return out


def class_embeddings(embed_texts, classes: list[dict], templates: Sequence[str],
                     names: Sequence[str] = ()) -> np.ndarray:
    emb = embed_texts(prompts(classes, templates, names)).reshape(
        len(classes), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def top1(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray) -> float:
    return float(np.mean(np.argmax(image_emb @ class_emb.T, axis=1) == labels))
