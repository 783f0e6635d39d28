"""The SigLIP 2 recipe against plain SigLIP on the built-in shapes (configs/siglip2.py), the table
"The SigLIP 2 recipe on shapes" in docs/BENCHMARKS.md: retrieval, the dense probe (object
patches), referring-expression accuracy beside the box prior, the swap perturbation, wall time;
then, per box coordinate, how often the recipe's decoder gets it right.

  python benchmarks/siglip2.py --root workdirs/siglip2          # both runs, one after the other
  python benchmarks/siglip2.py --root workdirs/siglip2 siglip2 --config.seed=1   # one, a variant

Each run is `python -m launch.train` in --root/<run>; a finished workdir is evaluated again, not
retrained. Extra arguments go to launch.train. Intervals: 95% Wilson, over the test split's
object patches, regions and swap pairs.
"""
from __future__ import annotations

import argparse
import os
import sys

from recipes import parse_with_overrides, train

RUNS = {"plain": "configs/siglip2.py:plain", "siglip2": "configs/siglip2.py"}
COLUMNS = (("i2t R@1", "i2t_r1"), ("t2i R@1", "t2i_r1"))
INTERVALS = (("dense colour (objects)", "dense_colour_accuracy_object"),
             ("dense kind (objects)", "dense_kind_accuracy_object"),
             ("refexp acc", "refexp_accuracy"), ("swap ITC", "compositional_swap_itc"))


def table(results: dict) -> str:
    head = [c for c, _ in COLUMNS] + [c for c, _ in INTERVALS] + ["box prior", "wall s"]
    lines = ["| run | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for run, (m, wall) in results.items():
        m = {k.removeprefix("eval/shapes/"): v for k, v in m.items()}
        cells = [f"{m[k]:.3f}" if k in m else "-" for _, k in COLUMNS]
        cells += [f"{m[k]:.3f} [{m[k + '_lo']:.2f}, {m[k + '_hi']:.2f}]" if k in m else "-"
                  for _, k in INTERVALS]
        cells.append(f"{m['refexp_prior_accuracy']:.3f}" if "refexp_prior_accuracy" in m else "-")
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {wall:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help=f"any of {', '.join(RUNS)} (default: both)")
    p.add_argument("--root", default="workdirs/siglip2")
    args, extra = parse_with_overrides(p, "runs")
    unknown = set(args.runs) - set(RUNS)
    if unknown:
        p.error(f"unknown runs {sorted(unknown)}; choose from {', '.join(RUNS)}")
    results = {run: train(RUNS[run], os.path.join(os.path.abspath(args.root), run), extra)
               for run in args.runs or RUNS}
    print(table(results))
    if "siglip2" in results:
        print(coordinates(os.path.join(os.path.abspath(args.root), "siglip2")))


def coordinates(workdir: str) -> str:
    """Where the recipe's boxes go wrong: per coordinate, the share of test regions decoded into
    the true bin or one off, and predicted so given the true coordinates before it."""
    from vlm_jax import evals
    from vlm_jax.train.evaluate import restore
    s, params, _ = restore(workdir)
    with s.context():
        got = evals.Evaluators(s).evaluators["refexp"].coordinates(params, "shapes")
    lines = ["| coordinate | " + " | ".join(k.replace("_", " ") for k in got) + " |",
             "|---" * (len(got) + 1) + "|"]
    for j, name in enumerate(("x0", "y0", "x1", "y1")):
        lines.append(f"| {name} | " + " | ".join(f"{v[j]:.3f}" for v in got.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
