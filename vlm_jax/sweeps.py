"""Sweeps: a base recipe and a list of points, each a dict of config overrides.

A sweep file (`configs/sweeps/NAME.py`) defines `get_sweep()` returning
`Sweep(config="configs/quickstart.py", points=...)`, with the points built from

  grid(**{"optim.lr": [1e-3, 3e-3], "contrastive.name": ["softmax", "sigmoid"]})   # 4 points
  zipped(**{"optim.lr": [1e-3, 3e-3], "optim.warmup_steps": [10, 50]})      # 2 points
  [{"optim.lr": 1e-3}, {"optim.lr": 1e-2, "optim.clip_norm": 0.5}]          # a plain list
  product(grid(...), zipped(...))                                           # every combination

Every point becomes one `python -m launch.train` command with `--config.KEY=VALUE` flags and a
workdir named after its values, so the launchers (local, TPU VM, SLURM) only differ in how they
run those commands.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
from typing import Any, Sequence

Point = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sweep:
    config: str                     # the recipe, optionally with its argument: path[:arg]
    points: Sequence[Point]
    name: str = ""                  # default: the sweep file's name


def grid(**axes: Sequence) -> list[Point]:
    """Every combination of the values (the last key varies fastest)."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zipped(**axes: Sequence) -> list[Point]:
    """The i-th values of every key together; all lists must have the same length."""
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zipped() needs lists of one length, got {lengths}")
    return [dict(zip(axes, values)) for values in zip(*axes.values())]


def product(*point_lists: Sequence[Point]) -> list[Point]:
    """Every combination of one point from each list, merged."""
    out = []
    for combo in itertools.product(*point_lists):
        merged: Point = {}
        for p in combo:
            merged.update(p)
        out.append(merged)
    return out


def load(path: str) -> Sweep:
    """The Sweep a sweep file's `get_sweep()` returns, checked."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"sweep file {path!r} not found")
    spec = importlib.util.spec_from_file_location("sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep()")
    sweep = module.get_sweep()
    if not isinstance(sweep, Sweep):
        raise ValueError(f"{path}: get_sweep() must return vlm_jax.sweeps.Sweep")
    if not sweep.points:
        raise ValueError(f"{path}: the sweep has no points")
    name = sweep.name or os.path.splitext(os.path.basename(path))[0]
    return dataclasses.replace(sweep, name=name, points=[dict(p) for p in sweep.points])


def point_name(point: Point) -> str:
    """'optim.lr=0.001,contrastive.name=sigmoid' -> a folder name: lr_0.001-name_sigmoid."""
    parts = [f"{key.split('.')[-1]}_{_flag_value(value)}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", "-".join(parts)) or "base"


def _flag_value(value) -> str:
    return value if isinstance(value, str) else repr(value)


def train_args(sweep: Sweep, point: Point, workdir: str, common: Point | None = None) -> list[str]:
    """The `launch.train` arguments of one point (`common` overrides apply to every point)."""
    args = ["--config", sweep.config, "--workdir", workdir]
    for key, value in {**(common or {}), **point}.items():
        args.append(f"--config.{key}={_flag_value(value)}")
    return args


def workdirs(sweep: Sweep, root: str) -> list[str]:
    names = [point_name(p) for p in sweep.points]
    if len(set(names)) != len(names):       # points that differ only in a way names drop
        names = [f"{i:03d}-{n}" for i, n in enumerate(names)]
    return [os.path.join(root, n) for n in names]


def tpu_vm_script(sweep: Sweep, root: str, common: Point | None = None) -> str:
    """A shell script running the points one after another on every worker of a TPU VM."""
    lines = ["#!/usr/bin/env bash",
             f"# Sweep '{sweep.name}': {len(sweep.points)} points, one after another on all workers",
             "# of the TPU VM $TPU_NAME (see launch/tpu_vm.sh for the environment it expects).",
             "# Run it from the repository root.",
             "set -euo pipefail"]
    for point, workdir in zip(sweep.points, workdirs(sweep, root)):
        args = " ".join(shlex.quote(a) for a in train_args(sweep, point, workdir, common))
        lines.append(f"launch/tpu_vm.sh {args}")
    return "\n".join(lines) + "\n"


def slurm_script(sweep: Sweep, root: str, common: Point | None = None) -> str:
    """A SLURM array job: task i trains point i, through launch/slurm.sbatch's settings."""
    n = len(sweep.points)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={sweep.name}", f"#SBATCH --array=0-{n - 1}",
             f"#SBATCH --output={root}/slurm-%A_%a.out",
             "# Nodes, GPUs and time per point: as in launch/slurm.sbatch, or on the sbatch line.",
             "set -euo pipefail", "case \"$SLURM_ARRAY_TASK_ID\" in"]
    for i, (point, workdir) in enumerate(zip(sweep.points, workdirs(sweep, root))):
        args = " ".join(shlex.quote(a) for a in train_args(sweep, point, workdir, common))
        lines.append(f"  {i}) ARGS=({args}) ;;")
    lines += ["esac", 'srun "${VLM_JAX_PYTHON:-.venv/bin/python}" -m launch.train "${ARGS[@]}"']
    return "\n".join(lines) + "\n"


def _rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_metrics(workdir: str) -> dict[str, float]:
    """The last logged train metrics and the last evaluation of a run's metrics.jsonl."""
    out: dict[str, float] = {}
    for row in _rows(workdir):
        out.update(row)
    return out


def eval_keys(workdir: str) -> set[str]:
    """The evaluators' metric names in a run's metrics.jsonl (whatever their prefixes): the
    keys of the rows without a train loss."""
    return {k for row in _rows(workdir) if "loss" not in row for k in row if k != "step"}


def collect(sweep: Sweep, root: str, columns: Sequence[str] = ()) -> tuple[str, str]:
    """(CSV, markdown table) of every point: its override values, its final step, loss and
    evaluation metrics (or `columns`); unfinished points show what they have."""
    rows = []
    for point, workdir in zip(sweep.points, workdirs(sweep, root)):
        m = final_metrics(workdir)
        rows.append((point, os.path.basename(workdir), m))
    keys = list(dict.fromkeys(k for p in sweep.points for k in p))
    if not columns:
        evals = set().union(*(eval_keys(w) for w in workdirs(sweep, root)))
        columns = ["step", "loss"] + sorted(evals)
    header = ["point"] + keys + list(columns)
    table = [[name] + [_flag_value(p.get(k, "")) for k in keys]
             + [_fmt(m.get(c)) for c in columns] for p, name, m in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + table)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    return buf.getvalue(), "\n".join(md) + "\n"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if not value.is_integer() else str(int(value))
    return str(value)
