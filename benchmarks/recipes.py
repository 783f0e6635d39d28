"""Full runs of every recipe on the built-in data, and the table of what each reaches.

Each recipe trains in its own process (`python -m launch.train`), in `--root/<recipe>`; `lit`
starts from the `clip` run's checkpoint, so `clip` runs first. A finished workdir is not trained
again (its evaluation is re-run and reported), so an interrupted sweep continues where it stopped.
`flip` and `clipa` train in two stages (`--root/<recipe>_1`, then `--root/<recipe>` resuming it);
their wall time is both stages'.
Figures are from the test splits: zero-shot top-1 on digits, retrieval R@1 on digits by
similarity and (ITM heads) re-ranked by ITM, MLM accuracy; wall time includes compiles and evals.

  python benchmarks/recipes.py --root workdirs/recipes              # all, a markdown table
  python benchmarks/recipes.py --root workdirs/recipes albef coca   # some
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("clip", "siglip", "lit", "albef", "flava", "coca", "flip", "clipa")
STAGED = ("flip", "clipa")      # a first stage in <recipe>_1, the second resuming it
WALL = "benchmark_wall_s.txt"   # in a workdir: the seconds the run that trained it took
COLUMNS = (("zero-shot", "eval/digits/zeroshot_top1"), ("i2t R@1", "eval/digits/i2t_r1"),
           ("t2i R@1", "eval/digits/t2i_r1"), ("i2t R@1 ITM", "eval/digits/itm_i2t_r1"),
           ("t2i R@1 ITM", "eval/digits/itm_t2i_r1"), ("MLM acc", "eval/digits/mlm_accuracy"))


def last(path: str) -> dict:
    """The last value of every key in a metrics.jsonl."""
    out = {}
    with open(path) as f:
        for line in f:
            out.update(json.loads(line))
    return out


def train(config: str, workdir: str, extra=()) -> tuple[dict, float]:
    """(the last value of every metric, wall seconds) of `launch.train --config CONFIG` in
    `workdir`. A finished one resumes at its end, evaluated again, not retrained: its wall time
    is the run's that trained it from scratch (kept in WALL), NaN where none did."""
    wall_file, fresh = os.path.join(workdir, WALL), not os.path.exists(workdir)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "launch.train", "--config", config, "--workdir", workdir,
                    *extra], cwd=ROOT, check=True)
    if fresh:
        with open(wall_file, "w") as f:
            f.write(f"{time.perf_counter() - t0:.1f}\n")
    wall = float(open(wall_file).read()) if os.path.exists(wall_file) else float("nan")
    return last(os.path.join(workdir, "metrics.jsonl")), wall


def parse_with_overrides(parser: argparse.ArgumentParser, positional: str):
    """(args, the config overrides for launch.train) of a benchmark's command line. argparse
    takes an option whose value holds a space ("--config.x=((0, 1.),)") for a positional: those
    leave `positional` for the overrides too."""
    args, extra = parser.parse_known_args()
    names = getattr(args, positional)
    setattr(args, positional, [v for v in names if not v.startswith("-")])
    return args, extra + [v for v in names if v.startswith("-")]


def run(recipe: str, root: str) -> tuple[dict, float]:
    if recipe in STAGED:     # wall time: both stages
        first = os.path.join(root, f"{recipe}_1")
        _, wall = train(f"configs/{recipe}.py", first)
        metrics, wall2 = train(f"configs/{recipe}.py:{first}", os.path.join(root, recipe))
        return metrics, wall + wall2
    config = f"configs/{recipe}.py" + (f":{os.path.join(root, 'clip')}" if recipe == "lit" else "")
    return train(config, os.path.join(root, recipe))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", help=f"any of {', '.join(RECIPES)} (default: all)")
    p.add_argument("--root", default="workdirs/recipes")
    args = p.parse_args()
    unknown = set(args.recipes) - set(RECIPES)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(RECIPES)}")
    args.recipes = args.recipes or RECIPES
    rows = []
    for recipe in args.recipes:
        metrics, wall = run(recipe, os.path.abspath(args.root))
        losses = " ".join(f"{k.split('/')[0]} {metrics[k]:.3f}" for k in sorted(metrics)
                          if k.endswith("/loss"))
        cells = [f"{metrics[k]:.3f}" if k in metrics else "-" for _, k in COLUMNS]
        rows.append(f"| {recipe} | {' | '.join(cells)} | {losses} | {wall:.0f} |")
        print(rows[-1], flush=True)
    print("\n| recipe | " + " | ".join(c for c, _ in COLUMNS) + " | final train losses | wall s |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
