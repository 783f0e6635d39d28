"""Dense probe: linear classifiers on frozen patch features, predicting what each patch shows from
the renderer's masks: its object's colour and its object's kind (or background).

For sets whose records carry `segmentation` (a PNG of each pixel's object index + 1, 0 for the
background) and `objects` ([colour, kind] per object; the built-in shapes). A patch of the eval
view is labelled with the object covering at least half of its pixels, else background. A ridge
classifier (linear_probe.ridge_fit, `eval.probe_l2`) is fit per attribute on the train split's
patch tokens (the image tower's last tokens) and scored on the test split: over every patch
(`dense_colour_accuracy`, `dense_kind_accuracy`) and over the patches that show an object
(`..._object`, where background is no answer to copy), with the 95% Wilson intervals of the
latter and the patch counts.

Fit on every training object, a probe may read one attribute off the other where they go
together (on shapes, red objects are never triangles in training). So each attribute is probed
again without that help (`dense_<a>_accuracy_seen_pair`, `..._unseen_pair`): fit only on the
objects whose other attribute occurs with every value of this one in training (the colours seen
as every kind), scored on the other objects of the test split, those of a pair the train split
holds and those of a pair it never shows. Where the two differ, the tower represents the
attribute only in the combinations it was trained on.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vlm_jax.data import records, sources
from vlm_jax.evals import datasets
from vlm_jax.evals.linear_probe import ridge_fit
from vlm_jax.evals.stats import wilson

ATTRIBUTES = ("colour", "kind")


def patch_labels(segmentation: np.ndarray, size: int, patch: int) -> np.ndarray:
    """[N] object index + 1 of each patch of the size x size view (row-major), 0 where no
    object covers at least half of the patch."""
    seg = np.asarray(Image.fromarray(segmentation).resize((size, size), Image.NEAREST))
    g = size // patch
    blocks = seg.reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, patch * patch)
    counts = np.stack([(blocks == k).sum(1) for k in range(int(seg.max()) + 1)], axis=1)
    best = counts[:, 1:].argmax(1) + 1 if counts.shape[1] > 1 else np.zeros(len(blocks), int)
    covered = counts[np.arange(len(blocks)), best] * 2 >= patch * patch
    return np.where(covered, best, 0)


def read_layouts(src, data_dir) -> list[tuple[np.ndarray, list]]:
    """(segmentation [H, W] uint8, objects) of every record of a source."""
    ds, _, where = sources.open_source(src, data_dir, need_captions=False)
    out = []
    for i in range(len(ds)):
        ex = records.unpack(ds[i], f"record #{i} of {where}")
        if "segmentation" not in ex or "objects" not in ex:
            raise ValueError(f"eval.dense_probe: record #{i} of {where} has no 'segmentation' "
                             "and 'objects' (the built-in shapes write them)")
        out.append((np.asarray(Image.open(io.BytesIO(ex["segmentation"]))), ex["objects"]))
    return out


class Evaluator:
    image_keys = ()     # it reads the patch tokens of both splits itself

    def __init__(self, data, config):
        self.data, self.config = data, config
        self.size, self.patch = config.data.image_size, config.model.image.patch_size

    def _split(self, params, dataset: str, split: str, names: dict | None):
        """(patch features [images * N, d], labels per attribute [images * N], names)."""
        s = self.data.spec(dataset)
        layouts = read_layouts(datasets.source(s, self.data.split(dataset, split)),
                               self.data.data_dir)
        tokens = self.data.images(params, dataset, split, "img/tokens")
        valid = self.data.images(params, dataset, split, "valid")
        n = (self.size // self.patch) ** 2
        if names is None:       # class 0 is background; the train split's values after it
            names = {a: ["background"] + sorted({o[k] for _, objs in layouts for o in objs})
                     for k, a in enumerate(ATTRIBUTES)}
        feats, labels = [], {a: [] for a in ATTRIBUTES}
        for (seg, objs), x, ok in zip(layouts, tokens, valid):
            if not ok:
                continue
            index = patch_labels(seg, self.size, self.patch)
            feats.append(np.asarray(x[-n:], np.float64))
            for k, a in enumerate(ATTRIBUTES):
                table = np.array([0] + [names[a].index(o[k]) if o[k] in names[a] else -1
                                        for o in objs])
                labels[a].append(table[index])
        return np.concatenate(feats), {a: np.concatenate(v) for a, v in labels.items()}, names

    def run(self, params, dataset: str) -> dict[str, float]:
        train_x, train_y, names = self._split(params, dataset, "train", None)
        test_x, test_y, _ = self._split(params, dataset, "test", names)
        out = {}
        for a in ATTRIBUTES:
            w, b = ridge_fit(train_x, train_y[a], len(names[a]), self.config.eval.probe_l2)
            pred = np.argmax(test_x @ w + b, axis=1)
            hit, obj = pred == test_y[a], test_y[a] > 0
            out[f"dense_{a}_accuracy"] = float(hit.mean())
            k = float(hit[obj].sum())
            out[f"dense_{a}_accuracy_object"] = k / max(int(obj.sum()), 1)
            lo, hi = wilson(k, int(obj.sum()))
            out[f"dense_{a}_accuracy_object_lo"], out[f"dense_{a}_accuracy_object_hi"] = lo, hi
            out.update(_by_pair(a, train_x, train_y, test_x, test_y, len(names[a]),
                                self.config.eval.probe_l2))
        out["dense_object_patches"] = float((test_y["colour"] > 0).sum())
        return out


def _by_pair(a: str, train_x, train_y, test_x, test_y, classes: int, l2: float) -> dict:
    """Attribute `a` probed where the other attribute says nothing of it (module docstring):
    accuracy on the test objects outside the fit, of pairs seen in training and of unseen ones
    (each with its Wilson interval and count; a group with no patch is left out)."""
    other = ATTRIBUTES[1 - ATTRIBUTES.index(a)]
    obj = train_y[a] > 0
    pairs = set(zip(train_y[other][obj].tolist(), train_y[a][obj].tolist()))
    values = set(train_y[a][obj].tolist())
    full = [v for v in set(train_y[other][obj].tolist())
            if {x for o, x in pairs if o == v} == values]
    fit = obj & np.isin(train_y[other], full)
    if len(values) < 2 or not fit.any():
        return {}
    w, b = ridge_fit(train_x[fit], train_y[a][fit], classes, l2)
    logits = test_x @ w + b
    logits[:, 0] = -np.inf                      # objects only: background is no answer
    hit = np.argmax(logits, axis=1) == test_y[a]
    rest = (test_y[a] > 0) & ~np.isin(test_y[other], full)
    seen = np.array([p in pairs for p in zip(test_y[other].tolist(), test_y[a].tolist())])
    out = {}
    for name, group in (("seen_pair", rest & seen), ("unseen_pair", rest & ~seen)):
        n = int(group.sum())
        if n:
            k = float(hit[group].sum())
            key = f"dense_{a}_accuracy_{name}"
            out[key] = k / n
            out[f"{key}_lo"], out[f"{key}_hi"] = wilson(k, n)
            out[f"dense_{a}_{name}_patches"] = float(n)
    return out
