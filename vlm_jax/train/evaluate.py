"""Evaluating a saved checkpoint, outside a training run: only the checkpoint's params and the
config beside it are read (no training data, no optimizer)."""
from __future__ import annotations

import os

import jax
from absl import logging

from vlm_jax import config as config_lib, evals, workdir as workdir_lib
from vlm_jax.evals import suite as suite_lib
from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint, metrics as metrics_lib


EMBEDDING = "txt/embedding/embedding"      # [vocabulary, width]: the tokenizer's ids


def locate(path: str, step: int | None = None) -> tuple[str, str]:
    """(the folder holding config.json, the checkpoint path) of a training workdir, a converted
    checkpoint (launch.convert_weights' OUTPUT) or one step's folder WORKDIR/checkpoints/N."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, os.path.join(path, "checkpoints", "" if step is None else str(step))
    parent = os.path.dirname(os.path.dirname(path))
    if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.isfile(
            os.path.join(parent, "config.json")):
        return parent, path
    raise FileNotFoundError(f"{path}: no config.json here nor two folders up; give a training "
                            "workdir, a folder written by launch.convert_weights, or "
                            "WORKDIR/checkpoints/STEP")


def _moved_tokenizer(config, config_dir: str) -> None:
    """A converted checkpoint copied to another machine: its tokenizer file beside config.json
    when the recorded absolute path is not there."""
    t = config.tokenizer
    here = os.path.join(config_dir, os.path.basename(t.path)) if t.path else ""
    if t.name != "bytes" and not os.path.isfile(t.path) and os.path.isfile(here):
        logging.info("tokenizer.path %s is not here; using %s", t.path, here)
        t.path = here


def restore(path: str, step: int | None = None, suite=None, overrides: dict | None = None):
    """(Setup, params, step) of a checkpoint (default: the latest), with a suite's eval sets
    and evaluators in place of the config's and `overrides` ({dotted key: value}) last."""
    config_dir, ckpt = locate(path, step)
    config = workdir_lib.load_config(config_dir)
    _moved_tokenizer(config, config_dir)
    if suite is not None:
        suite_lib.apply(config, suite)
    for key, value in (overrides or {}).items():
        config_lib.assign(config, key, value)
    config_lib.validate(config)
    s = Setup(config)
    try:
        params, step = checkpoint.read_params(ckpt, s.abstract_params())
    except checkpoint.ShapeError as e:
        rows = e.mismatches.get(EMBEDDING)
        if rows is None:
            raise
        t = config.tokenizer
        raise ValueError(
            f"the tokenizer does not fit the checkpoint: {t.path or t.name!r} "
            f"(tokenizer.name={t.name!r}) has {s.tokenizer.vocab_size} ids, a text embedding "
            f"of {rows[1][0]} rows, but {ckpt}'s has {rows[0][0]}; set tokenizer.name and "
            "tokenizer.path to the model's own (--config.tokenizer.path=...)") from None
    return s, params, step


def evaluate_workdir(workdir: str, step: int | None = None, kinds=None,
                     overrides: dict | None = None) -> dict:
    """Runs the evaluators `kinds` (default: all) on a checkpoint; appends the results to
    metrics.jsonl."""
    s, params, step = restore(workdir, step, overrides=overrides)
    with s.context():
        results = evals.Evaluators(s).run(params, kinds)
    metrics_lib.JsonlWriter(workdir).write(step, results)
    return {"step": step, **results}


def evaluate_suite(path: str, suite_path: str, step: int | None = None,
                   output_dir: str | None = None, overrides: dict | None = None) -> dict:
    """Evaluates a checkpoint on a suite's eval sets; writes results.json and results.md to
    `output_dir` (default: CHECKPOINT_FOLDER/eval/SUITE_NAME) and returns the report."""
    s, params, step = restore(path, step, suite_lib.load(suite_path), overrides)
    names, missing = suite_lib.present(s.config)
    for name, why in missing.items():
        logging.warning("%s: not evaluated: %s", name, why)
    with s.context():
        evaluators = evals.Evaluators(s, strict=False)
        results, seconds, failed = suite_lib.run(evaluators, params, names)
    report = {"checkpoint": os.path.abspath(path), "step": step,
              "suite": os.path.abspath(suite_path), "results": results, "seconds": seconds,
              "missing": missing, "skipped": evaluators.skipped, "failed": failed}
    name = os.path.splitext(os.path.basename(suite_path))[0]
    out = output_dir or os.path.join(locate(path, step)[0], "eval", name)
    # Every process holds the same results; one writes them.
    files = suite_lib.write(report, out, evaluators) if jax.process_index() == 0 else []
    return {**report, "files": files}
