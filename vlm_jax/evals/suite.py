"""Benchmark suites: a file listing eval sets (where each prepared copy is) and what to run on
each, evaluated on one checkpoint with a report per dataset, the way CLIP_benchmark reports.

A suite file (`configs/evals/NAME.py`) defines `get_config()` returning keys of the `eval`
config section: `datasets` (name -> eval_dataset(...)) and the evaluators' lists (`zeroshot`,
`retrieval`, `linear_probe`, ...), optionally `batch_size` or the probes' settings. Evaluators the
suite does not list do not run. The sets that cannot be read are listed with the reason and
skipped; the others run one after another, each reported as it finishes. A training run's
`eval.suite` adds a suite's sets and evaluators to its own (`merge`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time

import numpy as np
from absl import logging

from vlm_jax import config as config_lib
from vlm_jax.evals import datasets as datasets_lib

PROBES = ("linear_probe", "logistic_probe")
# CLIP_benchmark's task -> {our metric: its metric} (clip_benchmark/metrics): its retrieval
# names the thing retrieved, so image retrieval is text -> image.
CLIP_BENCHMARK = {
    "zeroshot_classification": {"zeroshot_top1": "acc1", "zeroshot_top5": "acc5",
                                "zeroshot_mean_per_class_recall": "mean_per_class_recall"},
    "zeroshot_retrieval": {**{f"t2i_r{k}": f"image_retrieval_recall@{k}" for k in (1, 5, 10)},
                           **{f"i2t_r{k}": f"text_retrieval_recall@{k}" for k in (1, 5, 10)}},
    "linear_probe": {"linear_probe_top1": "lp_acc1"},
}


def load(path: str):
    """The suite file's get_config()."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"suite file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"suite_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"suite file {path} defines no get_config()")
    return module.get_config()


def _add(config, suite, where: str) -> dict:
    """Adds the suite's eval sets and settings to config.eval; returns its evaluator lists."""
    e, lists = config.eval, {}
    for key, value in suite.items():
        if key == "datasets":
            for name, entry in value.items():
                e.datasets[name] = entry
        elif key in config_lib.EVALUATORS:
            lists[key] = tuple(value)
        elif key in e:
            e[key] = value
        else:
            raise config_lib.ConfigError(f"suite key '{key}'{where} is not an eval config key")
    return lists


def apply(config, suite) -> None:
    """Replaces the config's evaluator lists with the suite's and adds its eval sets; every
    metric is named '<dataset>/<metric>'."""
    e = config.eval
    e.suite = ""
    lists = _add(config, suite, "")
    for name in config_lib.EVALUATORS:
        e[name] = lists.get(name, ())
        e[f"{name}_prefix"] = "{dataset}/"
    config_lib.validate(config)


def merge(config):
    """A copy of the config whose evaluator lists and eval sets also hold eval.suite's; the
    suite's sets that cannot be read are left out, with a warning."""
    out = config.copy_and_resolve_references()
    out.eval.suite = ""
    added = _add(out, load(config.eval.suite), f" in {config.eval.suite}")
    readable, missing = present(_listing(out, added))
    for name, why in missing.items():
        logging.warning("eval.suite %s: %s left out: %s", config.eval.suite, name, why)
    e = out.eval
    for key, names in added.items():
        e[key] = tuple(e[key]) + tuple(n for n in names if n in readable and n not in e[key])
    config_lib.validate(out)
    return out


def _listing(config, lists: dict):
    """The config with only `lists` as its evaluators' sets (for `present`)."""
    c = config.copy_and_resolve_references()
    for name in config_lib.EVALUATORS:
        c.eval[name] = tuple(lists.get(name, ()))
    return c


def present(config) -> tuple[list[str], dict[str, str]]:
    """(the listed sets that can be read, {set: why not} for the others)."""
    listed = []
    for name in config_lib.EVALUATORS:
        listed += [d for d in config.eval[name] if d not in listed]
    ok, missing = [], {}
    data_dir = config.data_dir or None
    for name in listed:
        s = datasets_lib.spec(config, name)
        probed = any(name in config.eval[p] for p in PROBES)
        splits = [s.split] + ([s.train_split] if probed else []) + (
            [s.val_split] if probed and s.val_split else [])
        why = datasets_lib.missing(s, splits, data_dir)
        if why:
            missing[name] = why
        else:
            ok.append(name)
    return ok, missing


def run(evaluators, params, names: list[str]) -> tuple[dict, dict]:
    """({dataset: {metric: value}}, {dataset: seconds}), one dataset after another; a dataset
    whose evaluation fails is reported as failed (the others still run)."""
    config = evaluators.config
    results, seconds, failed = {}, {}, {}
    for i, name in enumerate(names):
        kinds = [k for k in config_lib.EVALUATORS if name in config.eval[k]]
        logging.info("[%d/%d] %s: %s", i + 1, len(names), name, ", ".join(kinds))
        t0 = time.perf_counter()
        try:
            out = evaluators.run(params, kinds, datasets=(name,))
        except (ValueError, OSError) as e:
            failed[name] = f"{type(e).__name__}: {e}".splitlines()[0]
            logging.error("[%d/%d] %s failed: %s", i + 1, len(names), name, failed[name])
            continue
        seconds[name] = time.perf_counter() - t0
        results[name] = {k.removeprefix(f"{name}/"): v for k, v in out.items()}
        logging.info("[%d/%d] %s done in %.1fs: %s", i + 1, len(names), name, seconds[name],
                     " ".join(f"{k}={v:.4g}" for k, v in results[name].items()))
    return results, seconds, failed


def markdown(report: dict) -> str:
    """The report as a table (dataset, metric, value), then the sets not evaluated."""
    lines = [f"Checkpoint `{report['checkpoint']}` (step {report['step']}), suite "
             f"`{report['suite']}`.", "", "| dataset | metric | value |", "|---|---|---|"]
    for name, metrics in report["results"].items():
        lines += [f"| {name} | {k} | {v:.4f} |" for k, v in metrics.items()]
    for title, key in (("Not found", "missing"), ("Not run", "skipped"), ("Failed", "failed")):
        if report.get(key):
            lines += ["", f"{title}:", ""] + [f"- {k}: {v}" for k, v in report[key].items()]
    return "\n".join(lines) + "\n"


def clip_benchmark(report: dict, language: str = "en") -> dict[str, dict]:
    """{file name: record} in CLIP_benchmark's output schema, one per dataset and task, named
    as it names them (`{dataset}_{pretrained}_{model}_{language}_{task}.json`): the model is
    the checkpoint folder's name, `pretrained` its step; its `clip_benchmark build` and the
    scripts that aggregate its results read them."""
    model = os.path.basename(os.path.normpath(report["checkpoint"]))
    pretrained = f"step{report['step']}"
    out = {}
    for dataset, metrics in report["results"].items():
        for task, names in CLIP_BENCHMARK.items():
            found = {theirs: metrics[ours] for ours, theirs in names.items() if ours in metrics}
            if found:
                slug = dataset.replace("/", "_")
                out[f"{slug}_{pretrained}_{model}_{language}_{task}.json"] = {
                    "dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
                    "metrics": found, "language": language}
    return out


def write(report: dict, directory: str, evaluators=None) -> list[str]:
    """results.json, results.md, CLIP_benchmark's per-dataset JSON in clip_benchmark/ and, for
    evaluators that keep per-example outputs (zero-shot's logits and predictions, retrieval's
    ranks), predictions/<dataset>.<evaluator>.npz in `directory`; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, "results.json"), os.path.join(directory, "results.md")]
    with open(paths[0], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(report))
    for name, record in clip_benchmark(report).items():
        os.makedirs(os.path.join(directory, "clip_benchmark"), exist_ok=True)
        paths.append(os.path.join(directory, "clip_benchmark", name))
        with open(paths[-1], "w") as f:
            json.dump(record, f, indent=1)
    for kind, ev in (evaluators.evaluators.items() if evaluators else ()):
        for name, arrays in getattr(ev, "outputs", {}).items():
            os.makedirs(os.path.join(directory, "predictions"), exist_ok=True)
            paths.append(os.path.join(directory, "predictions", f"{name}.{kind}.npz"))
            np.savez(paths[-1], **arrays)
    return paths
