"""The train loop's log action: the window of step metrics since the last report, the
non-finite check, data-wait time, skipped records and updates, throughput and MFU."""
from __future__ import annotations

import collections
import contextlib
import time

import jax
import numpy as np
from absl import logging

from vlm_jax.data import pipeline
from vlm_jax.train import flops as flops_lib, metrics as metrics_lib


class NonFiniteLossError(FloatingPointError):
    """The loss, the gradients or the updated params stopped being finite (nonfinite='stop')."""


class Monitor:
    def __init__(self, setup, writer, start_step: int):
        self.s, self.writer = setup, writer
        self.progress = metrics_lib.Progress(start_step, setup.total_steps, setup.config.batch_size)
        self.peak = flops_lib.peak_per_device(setup.config.log.peak_tflops)
        self.step_flops = {}                  # objectives left out -> FLOPs of that step
        self.pending, self.host = [], []      # step metrics on the device / fetched
        self.skipped = collections.Counter()  # records the pipeline dropped, by reason
        self.skipped_updates = 0              # non-finite steps (nonfinite='skip')
        self.data_wait, self.since = 0.0, time.perf_counter()

    @contextlib.contextmanager
    def waiting_for_data(self):
        t0 = time.perf_counter()     # the step runs async: time spent here is pure wait
        yield
        self.data_wait += time.perf_counter() - t0

    def record(self, metrics: dict, skips: dict) -> None:
        self.pending.append(metrics)
        self.skipped.update(skips)

    def check_finite(self, step: int, last_good: int | None, directory: str) -> None:
        """Fetches the pending metrics; with nonfinite='stop', raises on a non-finite step
        before anything of it is saved."""
        host, self.pending = jax.device_get(self.pending), []
        bad = [m["nonfinite"] for m in host]
        if any(bad) and self.s.config.nonfinite == "stop":
            first = step - len(bad) + int(np.argmax(bad)) + 1
            raise NonFiniteLossError(
                f"non-finite loss or gradients at step {first}; stopped without saving. " + (
                    f"The last good checkpoint is step {last_good} in {directory}"
                    if last_good is not None else "No checkpoint had been saved yet."))
        self.skipped_updates += int(sum(bad))
        self.host.extend(host)

    def log(self, step: int, batch, step_fn, off: frozenset[str] = frozenset()) -> dict:
        """Writes and returns the means since the last report plus throughput, MFU, memory,
        epoch and skip counts; prints the progress line."""
        config = self.s.config
        mean, self.host = metrics_lib.mean_window(self.host), []
        line, ex_s = self.progress.line(step, mean["loss"])
        now = time.perf_counter()
        wait = self.data_wait / max(now - self.since, 1e-9)
        self.data_wait, self.since = 0.0, now
        logging.info("%s | data wait %.0f%%", line, 100 * wait)
        if self.skipped_updates:
            logging.warning("%d non-finite steps skipped (nonfinite='skip')", self.skipped_updates)
        if sum(self.skipped.values()):
            logging.warning("skipped since the last log line: %s", dict(self.skipped))
        if off not in self.step_flops:        # the program that ran last (`off` left out)
            self.step_flops[off] = flops_lib.step_flops(self.s, batch, step_fn, off)
        achieved = self.step_flops[off] * ex_s / config.batch_size
        out = {**mean, "skipped_updates": self.skipped_updates,
               "tflops_per_sec": achieved / 1e12,
               **({"mfu": achieved / (self.peak * jax.device_count())} if self.peak else {}),
               "examples_per_sec": ex_s, "data_wait_fraction": wait, **metrics_lib.memory(),
               "epoch": step * config.batch_size / self.s.num_train,
               **{k: self.skipped[k] for k in pipeline.SKIP_METRICS}}
        self.skipped_updates = 0
        self.skipped.clear()
        self.writer.write(step, out)
        return out
