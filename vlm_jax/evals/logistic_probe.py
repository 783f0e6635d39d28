"""Logistic-regression probe, the CLIP paper's protocol: L2-regularised multinomial logistic
regression (L-BFGS, scikit-learn) on frozen image features; the inverse regularisation C is
picked on a validation split (the set's `val_split`, else `eval.probe_val_fraction` of the train
split held out with a fixed seed) by a sweep over 1e-6 .. 1e6 in factors of 100, refined twice
around the best by halving the step in log space; the classifier is then refit on train +
validation with that C and scored on the test split (top-1)."""
from __future__ import annotations

import warnings

import numpy as np

from vlm_jax.evals.linear_probe import features

GRID = tuple(10.0 ** p for p in range(-6, 7, 2))
REFINEMENTS = 2


def _fit(x, y, c: float):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    with warnings.catch_warnings():     # the weakest penalties of the sweep reach max_iter
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=1000).fit(x, y)


def _accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x) == y))


def pick_c(train, val) -> float:
    """The C of the best validation accuracy (ties: the smaller C, the stronger penalty)."""
    tried = {}

    def score(log_c):
        if log_c not in tried:
            tried[log_c] = _accuracy(_fit(*train, 10.0 ** log_c), *val)
        return tried[log_c]

    best = max((np.log10(c) for c in GRID), key=lambda p: (score(p), -p))
    step = 1.0                  # half the grid's spacing, in log10 units
    for _ in range(REFINEMENTS):
        best = max((best - step, best, best + step), key=lambda p: (score(p), -p))
        step /= 2
    return float(10.0 ** best)


def probe(train, val, test) -> dict[str, float]:
    """(x, labels) of each split -> {'logistic_probe_top1', 'logistic_probe_c'}."""
    c = pick_c(train, val)
    both = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    return {"logistic_probe_top1": _accuracy(_fit(*both, c), *test), "logistic_probe_c": c}


def held_out(x, y, fraction: float, seed: int = 0):
    """(train, val): a seeded random `fraction` of the examples held out for validation."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(fraction * len(y))))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


class Evaluator:
    image_keys = ()     # it reads its own representation, of each split

    def __init__(self, data, config):
        self.data, self.config = data, config

    def run(self, params, dataset: str) -> dict[str, float]:
        e = self.config.eval
        has_val = bool(self.data.spec(dataset).val_split)
        f = features(self.data, params, dataset, e.probe_representation,
                     ("train", "val", "test") if has_val else ("train", "test"))
        train, val = (f["train"], f["val"]) if has_val else held_out(*f["train"],
                                                                      e.probe_val_fraction)
        return probe(train, val, f["test"])
