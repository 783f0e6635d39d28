"""Evaluating a saved checkpoint, outside a training run."""
from __future__ import annotations

from vlm_jax import config as config_lib
from vlm_jax.train import checkpoint, metrics as metrics_lib, trainer


def restore_workdir(workdir: str, step: int | None = None):
    """(Setup, train state, step) of a training workdir's checkpoint (default: the latest)."""
    config = trainer.load_config(workdir)
    s = trainer.Setup(config)
    ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        state = ckpt.restore(step, s.abstract_state())
    finally:
        ckpt.close()
    return s, state, step


def evaluate_workdir(workdir: str, step: int | None = None,
                     kinds=config_lib.EVALUATORS) -> dict:
    """Runs the evaluators `kinds` on a checkpoint; appends the results to metrics.jsonl."""
    s, state, step = restore_workdir(workdir, step)
    with s.context():
        results = s.evaluator.run(state.params, kinds)
    metrics_lib.JsonlWriter(workdir).write(step, results)
    return {"step": step, **results}
