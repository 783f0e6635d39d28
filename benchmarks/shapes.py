"""The shapes recipes (configs/shapes.py) trained and scored: retrieval, ITM re-ranking, MLM
accuracy, and the compositional evaluator's accuracies with their 95% intervals (the tables
"Compositional evaluation on shapes" in docs/BENCHMARKS.md). p: the exact McNemar p-value of
a scorer against ITC on the same pairs, of ITM re-ranking against similarity on the same queries.

  python benchmarks/shapes.py --root workdirs/shapes                    # all three
  python benchmarks/shapes.py --root workdirs/shapes albef              # some
  python benchmarks/shapes.py --root workdirs/shapes albef --config.itm.weight=2   # a variant

Each recipe trains in its own process (`python -m launch.train`) in --root/<recipe>; a finished
workdir is not trained again. Extra arguments go to launch.train (config overrides).
"""
from __future__ import annotations

import argparse
import os
import sys

from recipes import last, train

from vlm_jax.evals.compositional import KINDS

VARIANTS = ("contrastive", "albef", "coca")
RETRIEVAL = (("i2t R@1", "i2t_r1"), ("t2i R@1", "t2i_r1"), ("i2t R@1 ITM", "itm_i2t_r1"),
             ("t2i R@1 ITM", "itm_t2i_r1"), ("i2t R@1 ITM+sim", "itm_sim_i2t_r1"),
             ("t2i R@1 ITM+sim", "itm_sim_t2i_r1"), ("MLM acc", "mlm_accuracy"),
             ("MLM content acc", "mlm_content_accuracy"))
SCORERS = ("itc", "itm", "caption", "caption_debiased")


def cell(m: dict, name: str, p: str | None = None) -> str:
    """A proportion with its interval, and the paired p-value `p` against a baseline if given."""
    if name not in m:
        return "-"
    text = f"{m[name]:.3f} [{m[name + '_lo']:.2f}, {m[name + '_hi']:.2f}]"
    return text + (f" p={m[p]:.2g}" if p in m else "")


def tables(results: dict) -> str:
    lines = ["| recipe | " + " | ".join(c for c, _ in RETRIEVAL) +
             " | ITM acc, perturbed | ITM acc, other scene | wall s |",
             "|---" * (len(RETRIEVAL) + 4) + "|"]
    for variant, (m, wall) in results.items():
        short = {k.removeprefix("eval/shapes/"): v for k, v in m.items()}
        vals = [f"{short[k]:.3f}" if k in short else "-" for _, k in RETRIEVAL]
        vals = [v + (f" (p={short[k + '_p']:.2g})" if k + "_p" in short else "")
                for v, (_, k) in zip(vals, RETRIEVAL)]
        itm = [cell(short, f"compositional_itm{k}_accuracy") for k in ("", "_other_scene")]
        lines.append(f"| {variant} | " + " | ".join(vals + itm) + f" | {wall:.0f} |")
    lines += ["", "| recipe | perturbation | pairs (held out) | " + " | ".join(
        f"{s}" for s in SCORERS) + " | " + " | ".join(f"{s} held out" for s in SCORERS) + " |",
        "|---" * (3 + 2 * len(SCORERS)) + "|"]
    for variant, (m, _) in results.items():
        m = {k.removeprefix("eval/shapes/"): v for k, v in m.items()}
        for kind in KINDS:
            pre = f"compositional_{kind}"
            n = f"{m.get(pre + '_n', 0):.0f} ({m.get(pre + '_heldout_n', 0):.0f})"
            lines.append(f"| {variant} | {kind} | {n} | " + " | ".join(
                cell(m, f"{pre}_{s}", f"{pre}_{s}_vs_itc_p") for s in SCORERS) + " | " + " | ".join(
                cell(m, f"{pre}_{s}_heldout") for s in SCORERS) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--root", default="workdirs/shapes")
    args, extra = p.parse_known_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    for variant in args.variants or VARIANTS:
        workdir = os.path.join(os.path.abspath(args.root), variant)
        results[variant] = train(f"configs/shapes.py:{variant}", workdir, extra)
    print(tables(results))


if __name__ == "__main__":
    sys.exit(main())
