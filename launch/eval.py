"""Evaluate the latest checkpoint of a training workdir.

  python -m launch.eval --workdir DIR [--step N] [--evaluators zeroshot,retrieval,...]

Only the checkpoint's params and DIR/config.json are read: the training data need not exist.

The model and eval settings come from DIR/config.json; results are printed and appended to
DIR/metrics.jsonl.
"""
from __future__ import annotations

import json

from absl import app, flags

from launch import flags as launch_flags  # noqa: F401  (defines --workdir)

STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
EVALUATORS = flags.DEFINE_list("evaluators", None, "Evaluators to run, each on the datasets its "
                               "eval.<name> lists; default: every one (vlm_jax/evals/).")


def main(argv):
    workdir = launch_flags.start(argv)
    from vlm_jax import config as config_lib
    from vlm_jax.train import evaluate
    names = tuple(EVALUATORS.value or config_lib.EVALUATORS)
    unknown = set(names) - set(config_lib.EVALUATORS)
    if unknown:
        raise app.UsageError(f"unknown --evaluators {sorted(unknown)}; "
                             f"choose from {','.join(config_lib.EVALUATORS)}")
    results = evaluate.evaluate_workdir(workdir, STEP.value, names)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
