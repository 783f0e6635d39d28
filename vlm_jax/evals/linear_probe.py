"""Linear probe: a closed-form ridge classifier on frozen features.

Features are centred on the training set; the weights solve (X^T X + a I) W = X^T Y for one-hot
targets Y (a = l2 * number of training examples; the intercept is not regularised), and a test
example's class is its highest score. Only d x d and d x classes matrices are formed.
"""
from __future__ import annotations

import numpy as np


def ridge_fit(x: np.ndarray, labels: np.ndarray, n_classes: int, l2: float = 1e-3):
    """(weights [d, classes], intercept [classes]) of the ridge classifier."""
    x = np.asarray(x, np.float64)
    y = np.eye(n_classes)[labels]
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc = x - mean_x
    alpha = l2 * len(x)
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - mean_y))
    return w, mean_y - mean_x @ w


def ridge_top1(train_x, train_labels, test_x, test_labels, l2: float = 1e-3) -> float:
    """Top-1 accuracy on the test features of a ridge classifier fit on the training ones."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    keep = train_labels >= 0                       # unlabelled (or unreadable) examples
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    w, b = ridge_fit(np.asarray(train_x)[keep], train_labels[keep], n_classes, l2)
    pred = np.argmax(np.asarray(test_x, np.float64) @ w + b, axis=1)
    scored = test_labels >= 0
    return float(np.mean(pred[scored] == test_labels[scored]))


def features(data, params, dataset: str, key: str, splits=("train", "test")) -> dict:
    """split -> (the image tower's `key` [n, ...] as float64, labels [n]) over the split's
    labelled images that could be read."""
    out = {}
    for split in splits:
        x = data.images(params, dataset, split, key)
        labels = data.texts(dataset, split)[1]
        keep = data.images(params, dataset, split, "valid") & (labels >= 0)
        if not keep.any():
            raise ValueError(f"eval set {dataset!r} has no labelled images in its "
                             f"{split} split ({data.split(dataset, split)!r})")
        out[split] = (np.asarray(x[keep], np.float64).reshape(int(keep.sum()), -1), labels[keep])
    return out


class Evaluator:
    """A ridge classifier fit on a dataset's train split of `eval.probe_representation` (any
    image-tower output), top-1 on its test split."""
    image_keys = ()     # it reads its own representation, of both splits

    def __init__(self, data, config):
        self.data, self.config = data, config

    def run(self, params, dataset: str) -> dict[str, float]:
        e = self.config.eval
        f = features(self.data, params, dataset, e.probe_representation)
        return {"linear_probe_top1": ridge_top1(*f["train"], *f["test"], e.probe_l2)}
