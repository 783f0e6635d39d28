r"""Filters an ArrayRecord dataset: text rules, near-duplicate images and a trained model's
image-text score; writes the kept records as a new dataset and reports what each rule dropped.

  python -m launch.filter --input '/data/cc12m_ar/*.array_record' --output /data/cc12m_f \
      --min_words 2 --phash_distance 4 --workdir workdirs/clip --keep_fraction 0.3

--workdir is needed only for --min_score / --keep_fraction (the score is the cosine between an
image and its best caption under that run's latest checkpoint). The report is printed and saved
as OUTPUT/filter_report.json.
"""
from __future__ import annotations

import json

from absl import app, flags

from launch import runtime

INPUT = flags.DEFINE_string("input", None, "ArrayRecord shards: files or globs, comma-separated.",
                            required=True)
OUTPUT = flags.DEFINE_string("output", None, "Folder for the kept records.", required=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir whose checkpoint scores pairs.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
MIN_WORDS = flags.DEFINE_integer("min_words", 0, "Drop captions with fewer words.")
DEDUP = flags.DEFINE_boolean("dedup_captions", True, "Drop captions already kept elsewhere.")
PHASH = flags.DEFINE_integer("phash_distance", -1, "Drop images within this many bits (of 64) "
                             "of a kept image's difference hash; -1 disables.")
MIN_SCORE = flags.DEFINE_float("min_score", None, "Drop pairs whose cosine is below this.")
KEEP = flags.DEFINE_float("keep_fraction", None, "Keep this top fraction by cosine.")
RESIZE = flags.DEFINE_enum("resize", None, ["shortest", "squash", "longest"], "Image view for "
                           "scoring; default: the model's (model.image.resize).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    scoring = MIN_SCORE.value is not None or KEEP.value is not None
    if scoring and not WORKDIR.value:
        raise app.UsageError("--min_score / --keep_fraction need --workdir (a trained run)")
    if KEEP.value is not None and not 0 < KEEP.value <= 1:
        raise app.UsageError("--keep_fraction must be in (0, 1]")
    from vlm_jax.data import filtering      # after the usage checks: it imports JAX (seconds)
    rules = filtering.Rules(MIN_WORDS.value, DEDUP.value, PHASH.value, MIN_SCORE.value, KEEP.value)
    score_fn = None
    if scoring:
        runtime.set_up()
        score_fn = filtering.model_scorer(WORKDIR.value, STEP.value, RESIZE.value)
    report = filtering.filter_dataset(INPUT.value, OUTPUT.value, rules, score_fn)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    runtime.run(main, "launch.filter")
