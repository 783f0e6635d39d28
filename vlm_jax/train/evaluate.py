"""Evaluating a saved checkpoint, outside a training run: only the checkpoint's params and the
workdir's config are read (no training data, no optimizer)."""
from __future__ import annotations

import os

from vlm_jax import evals, workdir as workdir_lib
from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint, metrics as metrics_lib


def restore_workdir(workdir: str, step: int | None = None):
    """(Setup, params, step) of a training workdir's checkpoint (default: the latest)."""
    s = Setup(workdir_lib.load_config(workdir))
    path = os.path.join(workdir, "checkpoints", "" if step is None else str(step))
    params, step = checkpoint.read_params(path, s.abstract_params())
    return s, params, step


def evaluate_workdir(workdir: str, step: int | None = None, kinds=None) -> dict:
    """Runs the evaluators `kinds` (default: all) on a checkpoint; appends the results to
    metrics.jsonl."""
    s, params, step = restore_workdir(workdir, step)
    with s.context():
        results = evals.Evaluators(s).run(params, kinds)
    metrics_lib.JsonlWriter(workdir).write(step, results)
    return {"step": step, **results}
