"""Train a model from a recipe.

  python -m launch.train --config configs/quickstart.py --workdir DIR [--config.KEY=VALUE ...]

Re-running the same command resumes from the latest checkpoint in DIR. Exit codes: 0 finished;
75 stopped by SIGTERM/SIGINT after saving a checkpoint (re-run to resume); 1 an error.
"""
from __future__ import annotations

import sys

from absl import app, logging

from launch import flags as launch_flags
from vlm_jax import config as config_lib
from vlm_jax.parallel import mesh as mesh_lib


def main(argv):
    workdir = launch_flags.start(argv)
    try:
        config = launch_flags.config()
    except config_lib.ConfigError as e:
        sys.exit(f"config error: {e}")
    mesh_lib.maybe_initialize_distributed()
    from vlm_jax.train import trainer
    try:
        results = trainer.train(config, workdir)
    except trainer.StoppedEarly as e:
        logging.warning("%s", e)
        sys.exit(e.exit_code)
    for key in sorted(k for k in results if k.startswith("eval/")):
        logging.info("%s = %.4f", key, results[key])


if __name__ == "__main__":
    app.run(main)
