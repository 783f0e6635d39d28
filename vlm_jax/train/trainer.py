"""The trainer loop: the one place with effects (data, checkpoints, logs, evals, signals).

Re-running the same command resumes from the latest complete checkpoint in the workdir, with the
data iterator at the saved position. SIGTERM or Ctrl-C saves a checkpoint at the current step and
exits cleanly (a second Ctrl-C aborts at once). A non-finite loss stops the run before anything
is saved, so the last good checkpoint stays the latest.
"""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from vlm_jax import config as config_lib
from vlm_jax import evals, models, objectives, rules
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.parallel import mesh as mesh_lib, sharding
from vlm_jax.train import checkpoint, flops as flops_lib, metrics as metrics_lib, optim
from vlm_jax.train import state as state_lib, step as step_lib


class NonFiniteLossError(FloatingPointError):
    """The loss, the gradients or the updated params stopped being finite (nonfinite='stop')."""


class StoppedEarly(Exception):
    """SIGTERM/SIGINT: a checkpoint at `step` was saved; running again resumes from it."""
    exit_code = 75     # EX_TEMPFAIL: not finished, safe to re-run (launch.train exits with it)

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped at step {step} after {signal_name}; the checkpoint is saved, "
                         f"re-run the same command to resume")
        self.step, self.signal_name = step, signal_name


class _StopRequest:
    """Turns SIGTERM and the first SIGINT into a request to save and stop.

    With several processes, JAX's preemption service owns SIGTERM: any process's notice is
    shared, and every process stops at the same step (`reached_preemption_sync_point`), so they
    all save the same checkpoint."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def __enter__(self):
        if jax.process_count() > 1 or not _main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        logging.warning("%s received: saving a checkpoint, then stopping "
                        "(Ctrl-C again aborts without saving)", self.requested)

    def due(self, step: int) -> bool:
        if jax.process_count() > 1 and self.requested is None:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self.requested = "SIGTERM"
                logging.warning("preemption notice: all processes save at step %d, then stop", step)
        return self.requested is not None

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _save_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=1, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() != text:
                logging.warning("config differs from the one this workdir was started with; "
                                "the old one is kept as config.json.prev")
                os.replace(path, path + ".prev")
    with open(path, "w") as f:
        f.write(text)


def load_config(workdir: str):
    """The config a workdir was trained with."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
    with open(path) as f:
        return config_lib.from_json(f.read(), where=path)


class Setup:
    """Everything a run derives from its config: mesh, data, model, optimizer, step, evals.
    `data=False` leaves out the dataset and the evaluators (benchmarks on synthetic batches;
    durations must then be given in steps or examples)."""

    def __init__(self, config, mesh=None, data: bool = True):
        config_lib.validate(config)
        self.config = config
        self.mesh = mesh_lib.from_config(config) if mesh is None else mesh
        self.rules = sharding.logical_rules(config)
        self.tokenizer = tokenizer_lib.build(config)
        self.dataset, self.num_train = (pipeline.train_dataset(config, self.tokenizer) if data
                                        else (None, 0))
        steps_per_epoch = self.num_train / config.batch_size
        self.total_steps = config_lib.steps(config, "total", steps_per_epoch=steps_per_epoch)
        dur = lambda name: config_lib.steps(config, name, steps_per_epoch=steps_per_epoch,
                                            total_steps=self.total_steps)
        self.warmup_steps = dur("optim.warmup") or 0
        self.log_every = dur("log_every") or self.total_steps
        self.checkpoint_every = dur("checkpoint_every") or self.total_steps
        # evaluator -> its cadence in steps (None: the last step only)
        self.eval_every = {k: dur(f"eval.{k}_every") or dur("eval_every")
                           for k in config_lib.EVALUATORS}
        self.model = models.build(config, self.tokenizer.vocab_size)
        self.init_rng, self.step_rng = jax.random.split(jax.random.key(config.seed))
        boxed = state_lib.abstract_params(self.model, config, self.init_rng)
        self.boxed_params = boxed
        self.tx, self.schedule = optim.build(config, nn.unbox(boxed), self.total_steps,
                                             self.warmup_steps)
        self.state_sh = state_lib.shardings(boxed, self.tx, self.mesh, self.rules, config)
        self.frozen = rules.tree_map_rules(config.optim.freeze_rules, nn.unbox(boxed), "freeze")
        self.batch_sh = sharding.batch_sharding(self.mesh, self.rules)
        self.objectives = objectives.build(config, self.mesh, self.tokenizer, self.total_steps)
        self.evaluator = (evals.Evaluator(config, self.model, self.mesh, self.rules, self.tokenizer)
                          if data else None)

    def context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def describe_sharding(self) -> list[str]:
        return [f"mesh {dict(self.mesh.shape)}"] + sharding.describe(
            self.boxed_params, self.mesh, self.rules, self.config.mesh.param_rules,
            self.config.mesh.fsdp_min_mib)

    def init_state(self):
        return state_lib.create(self.model, self.tx, self.config, self.mesh, self.rules,
                                self.init_rng, self.state_sh)

    def abstract_state(self):
        return state_lib.abstract(self.state_sh, self.model, self.tx, self.config, self.init_rng)

    def train_step(self):
        fn = step_lib.make(self.model, self.tx, self.objectives, self.schedule,
                           skip_nonfinite=self.config.nonfinite == "skip",
                           balance_decay=self.config.balance.decay, frozen=self.frozen,
                           microbatches=self.config.microbatches, mesh=self.mesh,
                           batch_axes=sharding.batch_axes(self.rules))
        batch_sh = {k: self.batch_sh for k in ("image", "tokens", "mask", "label")}
        return step_lib.jit(fn, self.state_sh, batch_sh, self.mesh)


def _start(s: Setup, ckpt, data_iter, workdir: str):
    """(step, state): the workdir's latest checkpoint, else config.resume (another run's
    checkpoint, data position included), else config.init (params selected by config.init_rules
    from a checkpoint, the rest freshly initialised), else from scratch."""
    config = s.config
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(start, s.abstract_state(), data_iter)
        logging.info("Resumed from step %d (checkpoint and data position) in %s", start, workdir)
        return start, state
    if config.resume:
        directory, start = checkpoint.resolve(config.resume)
        other = checkpoint.Checkpointer(os.path.dirname(directory), async_save=False)
        try:
            state = other.restore(start, s.abstract_state(), data_iter)
        finally:
            other.close()
        logging.info("Resumed from config.resume %s at step %d", directory, start)
        return start, state
    state = s.init_state()
    logging.info("Initialised %d params (%s); %d train examples, %d steps of %d",
                 state_lib.num_params(state.params), config.model.dtype, s.num_train,
                 s.total_steps, config.batch_size)
    if config.init:
        loaded, step = checkpoint.read_params(config.init)
        where = f"{config.init} (step {step})"
        params, report = checkpoint.load_params(state.params, loaded, config.init_rules, where)
        state = state.replace(params=params)
        logging.info("config.init: %d params loaded from %s, %d kept from initialisation; "
                     "%d in the checkpoint unused", len(report["loaded"]), where,
                     len(report["kept_init"]), len(report["unexpected"]))
        for p in report["kept_init"][:50]:
            logging.info("  kept from initialisation: %s", p)
        for p in report["unexpected"][:50]:
            logging.info("  unused from the checkpoint: %s", p)
    for line in optim.describe(config, state.params):
        logging.log_first_n(logging.INFO, line, 10_000)
    return 0, state


def _due(step: int, every: int | None, total: int) -> bool:
    return step == total or (every is not None and every > 0 and step % every == 0)


def train(config, workdir: str, mesh=None) -> dict:
    """Trains (or resumes) in `workdir`; returns the last logged train and eval metrics.

    `mesh` defaults to the config's over all devices; a checkpoint restores onto whatever mesh
    this run has (resharded), so a run can move between device counts."""
    os.makedirs(workdir, exist_ok=True)
    t_start = time.perf_counter()
    s = Setup(config, mesh)
    if jax.process_index() == 0:
        _save_config(config, workdir)
    ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints, config.async_checkpointing,
                                   config.keep_every_steps)
    data_iter = iter(s.dataset)
    for line in s.describe_sharding():
        logging.info("%s", line)
    start, state = _start(s, ckpt, data_iter, workdir)
    writer = metrics_lib.Writers(workdir, config, resume_step=start)
    step_fn = s.train_step()
    progress = metrics_lib.Progress(start, s.total_steps, config.batch_size)
    last, window, step = {}, [], start
    step_flops, peak = None, flops_lib.peak_per_device(config.log.peak_tflops)
    try:
        with s.context(), _StopRequest() as stop:
            data_wait, window_start = 0.0, time.perf_counter()
            skipped, skipped_updates = collections.Counter(), 0
            while step < s.total_steps:
                t0 = time.perf_counter()
                batch, skips = pipeline.split_skips(next(data_iter))
                batch = pipeline.to_global(batch, s.batch_sh)
                data_wait += time.perf_counter() - t0   # the step runs async: this is pure wait
                skipped.update(skips)
                state, m = step_fn(state, batch, s.step_rng)
                window.append(m)
                step += 1
                stopping = stop.due(step)
                if _due(step, s.log_every, s.total_steps) or stopping or _due(
                        step, s.checkpoint_every, s.total_steps):
                    host = jax.device_get(window)
                    bad = [w["nonfinite"] for w in host]
                    if any(bad) and config.nonfinite == "stop":
                        first = step - len(bad) + int(np.argmax(bad)) + 1
                        good = ckpt.latest_step()
                        raise NonFiniteLossError(
                            f"non-finite loss or gradients at step {first}; stopped without "
                            "saving. " + (
                                f"The last good checkpoint is step {good} in {ckpt.directory}"
                                if good is not None else "No checkpoint had been saved yet."))
                    skipped_updates += int(sum(bad))
                    if _due(step, s.log_every, s.total_steps) or stopping:
                        mean = metrics_lib.mean_window(host)
                        line, ex_s = progress.line(step, mean["loss"])
                        now = time.perf_counter()
                        wait = data_wait / max(now - window_start, 1e-9)
                        data_wait, window_start = 0.0, now
                        logging.info("%s | data wait %.0f%%", line, 100 * wait)
                        if skipped_updates:
                            logging.warning("%d non-finite steps skipped (nonfinite='skip')",
                                            skipped_updates)
                        mean["skipped_updates"], skipped_updates = skipped_updates, 0
                        if step_flops is None:
                            step_flops = flops_lib.step_flops(s, batch, step_fn)
                        achieved = step_flops * ex_s / config.batch_size
                        mean["tflops_per_sec"] = achieved / 1e12
                        if peak:
                            mean["mfu"] = achieved / (peak * jax.device_count())
                        last = {**mean, "examples_per_sec": ex_s, "data_wait_fraction": wait,
                                **metrics_lib.memory(),
                                "epoch": step * config.batch_size / s.num_train,
                                **{k: skipped[k] for k in pipeline.SKIP_METRICS}}
                        if sum(skipped.values()):
                            logging.warning("skipped since the last log line: %s", dict(skipped))
                        skipped.clear()
                        writer.write(step, last)
                    window = []
                if _due(step, s.checkpoint_every, s.total_steps) or stopping:
                    ckpt.save(step, state, data_iter)
                if stopping:
                    break
                due = [k for k, every in s.eval_every.items() if _due(step, every, s.total_steps)]
                if due:
                    results = s.evaluator.run(state.params, due)
                    writer.write(step, results)
                    last.update(results)
            if start == s.total_steps:   # resumed a finished run: report its evaluation again
                last = s.evaluator.run(state.params)
                writer.write(step, last)
    finally:
        ckpt.close()
        writer.close()
    if stop.requested is not None:
        raise StoppedEarly(step, stop.requested)
    logging.info("Done at step %d in %.0fs", step, time.perf_counter() - t_start)
    return last
