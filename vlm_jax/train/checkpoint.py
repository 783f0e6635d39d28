"""Orbax checkpoints: train state and the Grain iterator position saved together, async.

A step folder is only visible once complete (Orbax writes into a temporary folder and renames
it), so a run killed mid-save resumes from the previous complete step.
"""
from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True, keep_every: int = 0):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None,
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iter=None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state, data_iter=None):
        """The state at `step` placed on the shardings in `abstract_state`; `data_iter` (if given)
        is moved to the saved position in place."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no complete checkpoint for step {step} in {self.directory}; "
                                    f"have {self.manager.all_steps()}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items)).state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
