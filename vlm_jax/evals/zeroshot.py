"""Zero-shot classification with a prompt ensemble: each class is the renormalised mean of its
templates' text embeddings; an image's prediction is the most similar class.

A template is either a format string over the class's fields (the built-in datasets' own, e.g.
"the digit {word}") or holds `{}` for the class name (CLIP's: vlm_jax/evals/data/)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vlm_jax.evals import retrieval


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


def scores(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """pred [N, k] class indices best first, labels [N] -> top-1, top-5 accuracy and the mean
    over classes of each class's top-1 recall (classes without a test example left out)."""
    hit1 = pred[:, 0] == labels
    counts = np.bincount(labels, minlength=n_classes)
    per_class = np.bincount(labels, weights=hit1, minlength=n_classes)[counts > 0] / counts[counts > 0]
    return {"zeroshot_top1": float(hit1.mean()),
            "zeroshot_top5": float((pred[:, :5] == labels[:, None]).any(axis=1).mean()),
            "zeroshot_mean_per_class_recall": float(per_class.mean())}


class Evaluator:
    """Zero-shot classification on a dataset's test split with its classes and templates
    (vlm_jax/evals/datasets.py): top-1, top-5 and mean per-class recall over the labelled
    images that could be read."""
    image_keys = ("img/normed",)

    def __init__(self, data, config):
        self.data = data
        # dataset -> per-image results of the last run: the images' positions in the split,
        # their labels and top-5 predictions (launch.eval --suite saves them)
        self.outputs: dict[str, dict[str, np.ndarray]] = {}

    def run(self, params, dataset: str) -> dict[str, float]:
        emb = self.data.embedder
        names = self.data.classes(dataset)
        classes = class_embeddings(lambda t: emb.texts(params, t), names,
                                   self.data.templates(dataset))
        _, labels = self.data.texts(dataset)
        if labels.max(initial=-1) >= len(names):
            s = self.data.spec(dataset)
            raise ValueError(f"eval set {dataset!r}: label {labels.max()} but "
                             f"{s.class_names or 'its class list'} names {len(names)} classes")
        keep = self.data.images(params, dataset, key="valid") & (labels >= 0)
        if not keep.any():
            raise ValueError(f"eval set {dataset!r} has no labelled images to classify")
        pred = retrieval.top_k(self.data.images(params, dataset)[keep], classes, 5,
                               emb.mesh, emb.axes)
        self.outputs[dataset] = {"index": np.flatnonzero(keep), "label": labels[keep],
                                 "top5": pred}
        return scores(pred, labels[keep], len(names))
