"""Evaluate a checkpoint: the evaluators its config lists, or a benchmark suite.

  python -m launch.eval --workdir DIR [--step N] [--evaluators zeroshot,retrieval,...]
  python -m launch.eval --workdir DIR --suite configs/evals/NAME.py [--output_dir OUT]
  python -m launch.eval --checkpoint PATH --suite configs/evals/NAME.py [--config.KEY=VALUE ...]

Only the checkpoint's params and the config.json beside it are read: the training data need
not exist. PATH is a training workdir, a folder written by launch.convert_weights (a converted
Hugging Face or open_clip model) or one step's WORKDIR/checkpoints/N.

Without --suite the config's evaluators run; results are printed and appended to
DIR/metrics.jsonl. With --suite the suite's eval sets are evaluated (those not found are listed
with the reason), each reported as it finishes, and OUT/results.json and OUT/results.md are
written (default OUT: PATH/eval/NAME), with CLIP_benchmark's JSON per dataset and task in
OUT/clip_benchmark/ and per-image outputs in OUT/predictions/. --config.KEY=VALUE overrides a key
of the checkpoint's config.json (a tokenizer path on another machine, eval.batch_size). Input
errors end with one line naming the problem and exit status 1.
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from launch import runtime
from vlm_jax import config as config_lib

WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (instead of --checkpoint).")
# Overrides only: the checkpoint's own config.json is the base (the defaults are not used).
try:    # the override flags are defined here, from the command line
    CONFIG = config_flags.DEFINE_config_dict(
        "config", config_lib.defaults(), "Override a key of the checkpoint's config.json with "
        "--config.KEY=VALUE.")
except (AttributeError, KeyError) as e:
    raise runtime.unknown_key("launch.eval", e) from None
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A workdir, a converted checkpoint folder "
                                 "or WORKDIR/checkpoints/N (instead of --workdir).")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
SUITE = flags.DEFINE_string("suite", None, "A suite file (configs/evals/NAME.py): its eval sets "
                            "and evaluators replace the config's.")
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "With --suite: where results.json and "
                                 "results.md go; default PATH/eval/NAME.")
EVALUATORS = flags.DEFINE_list("evaluators", None, "Without --suite: evaluators to run, each on "
                               "the datasets its eval.<name> lists; default: every one.")


def overrides() -> dict:
    """{dotted key: value} of the --config.KEY=VALUE flags given."""
    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    return dict(flat(config_flags.get_override_values(flags.FLAGS["config"])))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    path = CHECKPOINT.value or WORKDIR.value
    if not path or (CHECKPOINT.value and WORKDIR.value):
        raise app.UsageError("give one of --workdir and --checkpoint")
    if not SUITE.value and (CHECKPOINT.value or OUTPUT_DIR.value):
        raise app.UsageError("--checkpoint and --output_dir go with --suite")
    if SUITE.value and EVALUATORS.value:
        raise app.UsageError("--evaluators goes without --suite (the suite lists what runs)")
    runtime.set_up()
    from vlm_jax.train import evaluate
    if SUITE.value:
        report = evaluate.evaluate_suite(path, SUITE.value, STEP.value, OUTPUT_DIR.value,
                                         overrides())
        from vlm_jax.evals import suite
        print(suite.markdown(report), end="")
        if report["files"]:
            print("written:", *report["files"])
        return
    names = tuple(EVALUATORS.value or config_lib.EVALUATORS)
    unknown = set(names) - set(config_lib.EVALUATORS)
    if unknown:
        raise app.UsageError(f"unknown --evaluators {sorted(unknown)}; "
                             f"choose from {','.join(config_lib.EVALUATORS)}")
    results = evaluate.evaluate_workdir(path, STEP.value, names, overrides())
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    runtime.run(main, "launch.eval")
