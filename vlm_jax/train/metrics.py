"""Metrics: `WORKDIR/metrics.jsonl` (one JSON object per line, with `step`) and the console line."""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np


def mean_window(window: list[dict]) -> dict:
    """Host floats: the mean of each metric over the steps since the last log, over its finite
    values (steps skipped as non-finite are counted separately); NaN when none is finite."""
    out = {}
    for k in window[0]:
        v = np.asarray([m[k] for m in window], np.float64)
        v = v[np.isfinite(v)]
        out[k] = float(v.mean()) if v.size else float("nan")
    return out


class JsonlWriter:
    """Appends metrics; on resume, drops lines past the restored step so each step appears once."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        if self.enabled and resume_step is not None and os.path.exists(self.path):
            kept = [line for line in open(self.path) if line.strip()
                    and json.loads(line).get("step", 0) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: (v if isinstance(v, str) else float(v))
                                     for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Examples per second and time left, measured over the steps since the previous report."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int):
        self.total, self.batch = total_steps, batch_size
        self.last_step, self.last_time = start_step, time.perf_counter()

    def line(self, step: int, loss: float) -> tuple[str, float]:
        now = time.perf_counter()
        dt = max(now - self.last_time, 1e-9)
        steps_per_s = (step - self.last_step) / dt
        self.last_step, self.last_time = step, now
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        ex_s = steps_per_s * self.batch
        return (f"step {step}/{self.total} | loss {loss:.4f} | {ex_s:.1f} ex/s | "
                f"ETA {_duration(eta)}", ex_s)
