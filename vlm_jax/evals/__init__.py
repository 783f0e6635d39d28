"""Evaluators: one module each in this folder, found by name.

The config names each evaluator's datasets (`eval.<name>`: a tuple of dataset names), its cadence
(`eval.<name>_every_*`, else `eval_every_*`; every evaluator also runs at the last step) and its
metric prefix (`eval.<name>_prefix`, '{dataset}' standing for the dataset). A module
`vlm_jax/evals/<name>.py` defines

    class Evaluator:
        image_keys = ("img/normed",)   # image-tower outputs it reads on the test split
        needs = "itm_logits"           # optional: the model head it needs
        def __init__(self, data: EvalData, config): ...
        def run(self, params, dataset: str) -> dict[str, float]: ...

`image_keys` lets every due evaluator of a dataset share one pass over its images. Datasets are
the built-in ones or entries of `eval.datasets` (vlm_jax/evals/datasets.py).
"""
from __future__ import annotations

import collections
import importlib
import time

from absl import logging

from vlm_jax import config as config_lib
from vlm_jax.evals.common import Embedder, EvalData


def evaluator_class(name: str):
    """The Evaluator class of module vlm_jax.evals.<name>."""
    try:
        module = importlib.import_module(f"vlm_jax.evals.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"vlm_jax.evals.{name}":
            raise
        raise ValueError(f"unknown evaluator {name!r}; "
                         f"choose from {config_lib.EVALUATORS}") from None
    return module.Evaluator


class Evaluators:
    """Every evaluator the config lists datasets for, over one shared EvalData."""

    def __init__(self, setup, strict: bool = True):
        """strict=False (suites, written for many models): an evaluator whose head the model
        lacks is left out, with the reason in `skipped`, instead of an error."""
        self.config = setup.config
        if self.config.eval.suite:
            from vlm_jax.evals import suite
            self.config = suite.merge(self.config)
        self.data = EvalData(self.config, Embedder.from_setup(setup))
        self.evaluators, self.skipped = {}, {}
        for name in config_lib.EVALUATORS:
            if not self.config.eval[name]:
                continue
            cls = evaluator_class(name)
            needs = getattr(cls, "needs", None)
            if needs and not self.data.embedder.has(needs):
                why = (f"the model has no {needs.removesuffix('_logits').upper()} head (its "
                       "objective's weight is 0)")
                if strict:
                    raise config_lib.ConfigError(
                        f"'eval.{name}' lists {tuple(self.config.eval[name])} but {why}")
                self.skipped[name] = why
                logging.warning("%s: not run: %s", name, why)
                continue
            for dataset in self.config.eval[name]:
                self.data.spec(dataset)         # an unknown name fails here, before any run
            self.evaluators[name] = cls(self.data, self.config)

    def run(self, params, names=None, datasets=None) -> dict[str, float]:
        """The evaluators in `names` (default: all) on every dataset they list (of `datasets`,
        default: all); each metric is named `eval.<evaluator>_prefix` (with the dataset) + the
        metric."""
        names = config_lib.EVALUATORS if names is None else names
        unknown = set(names) - set(config_lib.EVALUATORS)
        if unknown:
            raise ValueError(f"unknown evaluators {sorted(unknown)}; "
                             f"choose from {config_lib.EVALUATORS}")
        t0, e = time.perf_counter(), self.config.eval
        due = [n for n in names if n in self.evaluators]
        lists = {n: [d for d in e[n] if datasets is None or d in datasets] for n in due}
        keys = collections.defaultdict(set)
        for name in due:
            for dataset in lists[name]:
                keys[dataset].update(self.evaluators[name].image_keys)
        out = {}
        try:
            for dataset, k in keys.items():     # one pass over each test split's images
                self.data.embed_images(params, dataset, "test", k)
            for name in due:
                for dataset in lists[name]:
                    prefix = e[f"{name}_prefix"].format(dataset=dataset)
                    metrics = self.evaluators[name].run(params, dataset)
                    out.update({prefix + k: v for k, v in metrics.items()})
        finally:
            self.data.reset()
        if due:
            logging.info("eval (%s) took %.1fs: %s", ", ".join(due), time.perf_counter() - t0,
                         " ".join(f"{k}={v:.3f}" for k, v in out.items()))
        return out
