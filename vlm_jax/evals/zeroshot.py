"""Zero-shot classification with a prompt ensemble: each class is the renormalised mean of its
prompts' text embeddings; an image's prediction is the most similar class.

A template holds `{}` or `{c}` for the class name (CLIP's and CLIP_benchmark's forms; the lists in
vlm_jax/evals/data/) or names a field of the class (the built-in datasets' own, e.g. "the digit
{word}"). Templates may instead be given per class (CuPL, CLIP_benchmark's dict form): each class
then has prompts of its own, any number of them."""
from __future__ import annotations

import string
from typing import Mapping, Sequence

import numpy as np

from vlm_jax.evals import retrieval


def class_name(c: dict) -> str:
    return str(c.get("name", next(iter(c.values()))))


def fill(template: str, c: dict, name: str) -> str:
    """The template with `{}` / `{c}` as `name` and other fields from the class."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if not fields:
        raise ValueError(f"template {template!r} holds no placeholder: write '{{c}}' (or "
                         "'{}') where the class name goes")
    try:
        return template.format(name, **{**c, "c": name})
    except (KeyError, IndexError) as e:
        raise ValueError(f"template {template!r} names {e} but the classes have only "
                         f"'{{}}', '{{c}}' and {sorted(c)}") from None


def class_prompts(classes: list[dict], templates, names: Sequence[str] = ()) -> list[list[str]]:
    """Each class's prompts; `templates` is a list for every class, or a mapping from class
    name to that class's own prompts (used as written); `names` replaces the classes' names."""
    if names and len(names) != len(classes):
        raise ValueError(f"{len(names)} class names for {len(classes)} classes")
    names = list(names) or [class_name(c) for c in classes]
    if isinstance(templates, Mapping):
        missing = [n for n in names if not templates.get(n)]
        if missing:
            raise ValueError(f"the per-class prompts have none for {len(missing)} classes "
                             f"(e.g. {missing[0]!r})")
        return [list(templates[n]) for n in names]
    return [[fill(t, c, n) for t in templates] for c, n in zip(classes, names)]


def prompts(classes: list[dict], templates, names: Sequence[str] = ()) -> list[str]:
    """Every class's prompts, class by class."""
    return [p for ps in class_prompts(classes, templates, names) for p in ps]


def class_embeddings(embed_texts, classes: list[dict], templates,
                     names: Sequence[str] = ()) -> np.ndarray:
    """[classes, d] unit vectors: the mean of each class's prompt embeddings (`embed_texts`
    gives them normalised, as CLIP averages), normalised again."""
    per_class = class_prompts(classes, templates, names)
    emb = embed_texts([p for ps in per_class for p in ps])
    ends = np.cumsum([len(ps) for ps in per_class])
    emb = np.stack([part.mean(axis=0) for part in np.split(emb, ends[:-1])])
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


# Per-image logits are cosines times CLIP_benchmark's fixed 100; the full [images, classes]
# matrix is kept up to 16M entries (ImageNet's 50,000 x 1,000 keeps only the top 5).
LOGIT_SCALE = 100.0
MAX_LOGITS = 1 << 24


class Evaluator:
    """Zero-shot classification on a dataset's test split with its classes and templates
    (vlm_jax/evals/datasets.py): top-1, top-5 and mean per-class recall over the labelled
    images that could be read."""
    image_keys = ("img/normed",)

    def __init__(self, data, config):
        self.data = data
        # dataset -> per-image results of the last run (launch.eval --suite saves them): the
        # images' positions in the split, labels, top-5 predictions and their logits (100 x
        # cosine, CLIP_benchmark's), and every class's logit where the matrix is small
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
        img = self.data.images(params, dataset)[keep]
        pred = retrieval.top_k(img, classes, 5, emb.mesh, emb.axes)
        out = {"index": np.flatnonzero(keep), "label": labels[keep], "top5": pred,
               "top5_logits": LOGIT_SCALE * retrieval.cosines(img, classes, pred)}
        if img.shape[0] * classes.shape[0] <= MAX_LOGITS:
            out["logits"] = LOGIT_SCALE * (img.astype(np.float32) @ classes.astype(np.float32).T)
        self.outputs[dataset] = out
        return scores(pred, labels[keep], len(names))
