"""Evaluate the latest checkpoint of a training workdir.

  python -m launch.eval --workdir DIR [--step N] [--evaluators zeroshot,retrieval,linear_probe]

The model and eval settings come from DIR/config.json; results are printed and appended to
DIR/metrics.jsonl.
"""
from __future__ import annotations

import json

from absl import app, flags

from launch import flags as launch_flags  # noqa: F401  (defines --workdir)

STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
EVALUATORS = flags.DEFINE_list("evaluators", ["zeroshot", "retrieval", "linear_probe"],
                               "Evaluators to run, each on the datasets its eval.<name> lists.")


def main(argv):
    workdir = launch_flags.start(argv)
    from vlm_jax import config as config_lib
    from vlm_jax.train import evaluate
    unknown = set(EVALUATORS.value) - set(config_lib.EVALUATORS)
    if unknown:
        raise app.UsageError(f"unknown --evaluators {sorted(unknown)}; "
                             f"choose from {','.join(config_lib.EVALUATORS)}")
    results = evaluate.evaluate_workdir(workdir, STEP.value, tuple(EVALUATORS.value))
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
