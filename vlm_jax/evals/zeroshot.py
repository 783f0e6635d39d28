"""Zero-shot classification with a prompt ensemble: each class is the renormalised mean of its
templates' text embeddings; an image's prediction is the most similar class.

A template is either a format string over the class's fields (the built-in datasets' own, e.g.
"the digit {word}") or holds `{}` for the class name (CLIP's, `templates.CLIP`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vlm_jax.evals import templates


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


class Evaluator:
    """Zero-shot top-1 on a dataset's test split: `eval.templates` (the dataset's own, CLIP's 80,
    or `eval.custom_templates`), `eval.class_names` replacing the dataset's class names."""
    image_keys = ("img/normed",)

    def __init__(self, data, config):
        self.data, self.config = data, config

    def _templates(self, meta: dict) -> tuple:
        e = self.config.eval
        return {"builtin": tuple(meta["templates"]), "clip": templates.CLIP,
                "custom": tuple(e.custom_templates)}[e.templates]

    def run(self, params, dataset: str) -> dict[str, float]:
        meta = self.data.info(dataset)
        texts = lambda t: self.data.embedder.texts(params, t)
        classes = class_embeddings(texts, meta["classes"], self._templates(meta),
                                   tuple(self.config.eval.class_names))
        _, labels = self.data.texts(dataset)
        return {"zeroshot_top1": top1(self.data.images(params, dataset), labels, classes)}
