"""Metrics: `WORKDIR/metrics.jsonl` (one JSON object per line, with `step`), TensorBoard event
files in `WORKDIR/tensorboard` (written without TensorFlow), Weights & Biases when enabled, and
the console line. Only process 0 writes."""
from __future__ import annotations

import json
import math
import os
import resource
import time

import jax
import numpy as np

from vlm_jax import progress


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


class TensorBoardWriter:
    """Scalars as TensorBoard event files (tensorboardX; no TensorFlow). On resume, events past
    the restored step are purged, so a curve never doubles back."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30,
                                    purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, metrics: dict) -> None:
        # Non-finite means (an objective not computed yet, every step skipped) are left out: a
        # curve has no point there rather than a NaN one.
        for k, v in metrics.items():
            if not isinstance(v, str) and math.isfinite(v):
                self.writer.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """Weights & Biases, one run per workdir (its id kept in WORKDIR/wandb_id to resume it)."""

    def __init__(self, workdir: str, config, project: str):
        try:
            import wandb
        except ImportError:
            raise ImportError("log.wandb=True needs the wandb package: pip install wandb") from None
        id_path = os.path.join(workdir, "wandb_id")
        run_id = open(id_path).read().strip() if os.path.exists(id_path) else wandb.util.generate_id()
        with open(id_path, "w") as f:
            f.write(run_id)
        self.run = wandb.init(project=project, id=run_id, resume="allow", dir=workdir,
                              name=os.path.basename(os.path.abspath(workdir)),
                              config=json.loads(config.to_json_best_effort()))

    def write(self, step: int, metrics: dict) -> None:
        self.run.log({k: v for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class Writers:
    """Every sink the config asks for, written together (process 0 only)."""

    def __init__(self, workdir: str, config, resume_step: int | None = None):
        self.sinks = []
        if jax.process_index() != 0:
            return
        self.sinks.append(JsonlWriter(workdir, resume_step))
        if config.log.tensorboard:
            self.sinks.append(TensorBoardWriter(workdir, resume_step))
        if config.log.wandb:
            self.sinks.append(WandbWriter(workdir, config, config.log.wandb_project))

    def write(self, step: int, metrics: dict) -> None:
        for sink in self.sinks:
            sink.write(step, metrics)

    def close(self) -> None:
        for sink in self.sinks:
            getattr(sink, "close", lambda: None)()


def memory() -> dict[str, float]:
    """Host memory (this process: current and peak resident set) and, where the backend
    reports it, the first local device's memory in use and at peak, in GiB."""
    gib = 2.0 ** 30
    out = {"host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib}
    try:
        with open("/proc/self/statm") as f:
            out["host_gib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / gib
    except OSError:
        pass
    stats = jax.local_devices()[0].memory_stats() or {}
    for key, name in (("bytes_in_use", "device_gib"), ("peak_bytes_in_use", "device_peak_gib")):
        if key in stats:
            out[name] = stats[key] / gib
    return out


def read(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
                f"ETA {progress.duration(eta)}", ex_s)
