"""The trainer loop: the one place with effects (data, checkpoints, logs, evals, signals).

Re-running the same command resumes from the latest complete checkpoint in the workdir, with the
data iterator at the saved position. SIGTERM or Ctrl-C saves a checkpoint at the current step and
exits cleanly (a second Ctrl-C aborts at once). A non-finite loss stops the run before anything
is saved, so the last good checkpoint stays the latest.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import jax
from absl import logging

from vlm_jax import config as config_lib, evals, rules, workdir as workdir_lib
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint, metrics as metrics_lib, optim, state as state_lib
from vlm_jax.train.monitor import Monitor, NonFiniteLossError  # noqa: F401  (raised by train)


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
            state = other.restore(start, s.abstract_state(), data_iter, fresh=s.init_state)
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
        for p in report["resized"]:
            logging.info("  position embeddings fitted to this model: %s", p)
    return 0, state


def _due(step: int, every: int | None, total: int) -> bool:
    return step == total or (every is not None and every > 0 and step % every == 0)


def _rule_table(s: Setup, workdir: str) -> None:
    """Writes which rule placed, froze, decayed and scaled each param to the workdir; logs how
    many params each rule took."""
    c, params = s.config, s.param_shapes
    lines = s.describe_sharding() + optim.describe(c, params)
    path = workdir_lib.write_rule_table(workdir, lines) if jax.process_index() == 0 else None
    summary = (rules.summary(c.mesh.param_rules, params, "sharding")
               + optim.summary(c, params))
    logging.info("mesh %s; per-param rules in %s:\n  %s", dict(s.mesh.shape), path,
                 "\n  ".join(summary))


def _write_held_out(config, workdir: str) -> None:
    """WORKDIR/holdout.json: which records of each source the run keeps out of training."""
    split = pipeline.held_out(config)
    if not split:
        return
    with open(os.path.join(workdir, "holdout.json"), "w") as f:
        json.dump(split, f, indent=1)
    for name, h in split.items():
        logging.info("source %r: records [%d, %d) of %d held out of training (holdout.json)",
                     name, *h["held_out"], h["records"])


def train(config, workdir: str, mesh=None) -> dict:
    """Trains (or resumes) in `workdir`; returns the last logged train and eval metrics.

    `mesh` defaults to the config's over all devices; a checkpoint restores onto whatever mesh
    this run has (resharded), so a run can move between device counts."""
    os.makedirs(workdir, exist_ok=True)
    t_start = time.perf_counter()
    tokenizer = tokenizer_lib.build(config)
    dataset, num_train = pipeline.train_dataset(config, tokenizer)
    s = Setup(config, mesh, num_train=num_train, tokenizer=tokenizer)
    log_every, ckpt_every = s.steps("log_every"), s.steps("checkpoint_every")
    # The schedules span total_steps; this run (a stage of a longer one) may end before.
    total = min(s.total_steps, s.steps("stop_at") or s.total_steps)
    # evaluator -> its cadence in steps (None: the last step only)
    eval_every = {k: s.steps(f"eval.{k}_every") or s.steps("eval_every")
                  for k in config_lib.EVALUATORS}
    evaluator = evals.Evaluators(s)
    if jax.process_index() == 0:
        workdir_lib.save_config(config, workdir)
        _write_held_out(config, workdir)
    _rule_table(s, workdir)
    data_iter = iter(dataset)
    with contextlib.ExitStack() as run:
        ckpt = run.enter_context(contextlib.closing(checkpoint.Checkpointer(
            workdir, config.keep_checkpoints, config.async_checkpointing,
            config.keep_every_steps)))
        start, state = _start(s, ckpt, data_iter, workdir)
        writer = run.enter_context(contextlib.closing(
            metrics_lib.Writers(workdir, config, resume_step=start)))
        monitor = Monitor(s, writer, start)
        run.enter_context(s.context())
        stop = run.enter_context(_StopRequest())
        last, step, programs = {}, start, {}
        while step < total:
            with monitor.waiting_for_data():
                batch, skips = pipeline.split_skips(next(data_iter))
                batch = pipeline.to_global(batch, s.batch_sh)
            # Objectives scheduled to 0 are left out of the step (one program per set of them).
            off = s.off_at(step)
            if off not in programs:
                programs[off] = s.train_step(off)
            state, metrics = programs[off](state, batch, s.step_rng)
            step += 1
            monitor.record(metrics, skips)
            stopping = stop.due(step)
            log, save = _due(step, log_every, total), _due(step, ckpt_every, total)
            if log or save or stopping:
                monitor.check_finite(step, ckpt.latest_step(), ckpt.directory)
            if log or stopping:
                last = monitor.log(step, batch, programs[off], off)
            if save or stopping:
                ckpt.save(step, state, data_iter)
            if stopping:
                break
            due = [k for k, every in eval_every.items() if _due(step, every, total)]
            if due:
                results = evaluator.run(state.params, due)
                writer.write(step, results)
                last.update(results)
        if start >= total:   # resumed a finished run: report its evaluation again
            last = evaluator.run(state.params)
            writer.write(step, last)
    if stop.requested is not None:
        raise StoppedEarly(step, stop.requested)
    logging.info("Done at step %d in %.0fs", step, time.perf_counter() - t_start)
    return last
