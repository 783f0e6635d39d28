"""Evaluating a saved checkpoint, outside a training run."""
from __future__ import annotations

from vlm_jax.train import checkpoint, metrics as metrics_lib, trainer


def evaluate_workdir(workdir: str, step: int | None = None) -> dict:
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
    with s.context():
        results = s.evaluator.run(state.params)
    metrics_lib.JsonlWriter(workdir).write(step, results)
    return {"step": step, **results}
