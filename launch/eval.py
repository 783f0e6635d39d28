"""Evaluate the latest checkpoint of a training workdir.

  python -m launch.eval --workdir DIR [--step N]

The model and eval settings come from DIR/config.json; results are printed and appended to
DIR/metrics.jsonl.
"""
from __future__ import annotations

import json

from absl import app, flags

from launch import flags as launch_flags  # noqa: F401  (defines --workdir)

STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")


def main(argv):
    workdir = launch_flags.start(argv)
    from vlm_jax.train import evaluate
    results = evaluate.evaluate_workdir(workdir, STEP.value)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
