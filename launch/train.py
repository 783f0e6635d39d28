"""Train a model from a recipe.

  python -m launch.train --config configs/quickstart.py --workdir DIR [--config.KEY=VALUE ...]

Multi-process (one command per process; SLURM and multi-host Cloud TPU are detected instead):
  python -m launch.train ... --coordinator_address HOST:PORT --num_processes N --process_id I

Re-running the same command resumes from the latest checkpoint in DIR. Exit codes: 0 finished;
75 stopped by SIGTERM/SIGINT after saving a checkpoint (re-run to resume); 1 an error.
"""
from __future__ import annotations

import sys

from absl import flags, logging

from launch import flags as launch_flags, runtime
from vlm_jax.parallel import mesh as mesh_lib

COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a "
                                  "multi-process run outside SLURM/Cloud TPU (which are detected).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")


def main(argv):
    workdir = launch_flags.start(argv)
    config = launch_flags.config()     # a ConfigError ends the command with its line
    mesh_lib.maybe_initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value,
                                          PROCESS_ID.value)
    from vlm_jax.train import trainer
    try:
        results = trainer.train(config, workdir)
    except trainer.StoppedEarly as e:
        logging.warning("%s", e)
        sys.exit(e.exit_code)
    for key in sorted(k for k in results if k.startswith("eval/")):
        logging.info("%s = %.4f", key, results[key])


if __name__ == "__main__":
    runtime.run(main, "launch.train")
