"""The shapes recipes (configs/shapes.py) trained and scored: retrieval, ITM re-ranking, MLM
accuracy, and the compositional evaluator's accuracies with their 95% intervals (the tables
"Compositional evaluation on shapes" in docs/BENCHMARKS.md). p: the exact McNemar p-value of
a scorer against ITC on the same pairs, of ITM re-ranking against similarity on the same queries.
Each recipe has two rows: on the test scenes (each holds a colour-shape pair never seen in
training) and, "seen pairs", on the val split's new scenes of seen pairs (`shapes_seen`).

  python benchmarks/shapes.py --root workdirs/shapes                    # all three
  python benchmarks/shapes.py --root workdirs/shapes albef              # some
  python benchmarks/shapes.py --root workdirs/shapes albef --config.itm.weight=2   # a variant
  python benchmarks/shapes.py --root workdirs/shapes albef --mistakes   # + where R@1 goes wrong
  python benchmarks/shapes.py --root workdirs/shapes --seen     # + the seen-pair scenes, by novelty

Each recipe trains in its own process (`python -m launch.train`) in --root/<recipe>; a finished
workdir is not trained again. Extra arguments go to launch.train (config overrides).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from recipes import last, parse_with_overrides, train

from vlm_jax.evals.compositional import KINDS

VARIANTS = ("contrastive", "albef", "coca", "flava")
RETRIEVAL = (("i2t R@1", "i2t_r1"), ("t2i R@1", "t2i_r1"), ("i2t R@1 ITM", "itm_i2t_r1"),
             ("t2i R@1 ITM", "itm_t2i_r1"), ("i2t R@1 ITM+sim", "itm_sim_i2t_r1"),
             ("t2i R@1 ITM+sim", "itm_sim_t2i_r1"), ("i2t R@1 ITM+ITC", "itm_itc_i2t_r1"),
             ("t2i R@1 ITM+ITC", "itm_itc_t2i_r1"), ("MLM acc", "mlm_accuracy"),
             ("MLM content acc", "mlm_content_accuracy"))
SCORERS = ("itc", "itm", "caption", "caption_debiased")
# The eval sets of configs/shapes.py and their rows' suffix: the test scenes (each holds a
# colour-shape pair never seen in training), the val scenes (only seen pairs).
SETS = (("shapes", ""), ("shapes_seen", ", seen pairs"))
# How the text ranked first describes the image, closest first: its scene exactly, the same
# objects in another order, the same colours and kinds bound otherwise, one object's colour,
# kind or both changed, another number of objects, two or more objects changed.
RELATIONS = ("right", "order", "binding", "colour", "kind", "object", "count", "other")


def cell(m: dict, name: str, p: str | None = None) -> str:
    """A proportion with its interval, and the paired p-value `p` against a baseline if given
    ("-" where there is none, or no pair to count)."""
    if name not in m or m[name] != m[name]:
        return "-"
    text = f"{m[name]:.3f} [{m[name + '_lo']:.2f}, {m[name + '_hi']:.2f}]"
    return text + (f" p={m[p]:.2g}" if p in m else "")


def by_set(results: dict):
    """(row label, the set's metrics without their prefix, wall seconds) per recipe and eval set
    it was scored on: the held-out-pair test scenes, then the seen-pair ones."""
    for variant, (m, wall) in results.items():
        for name, label in SETS:
            short = {k.removeprefix(f"eval/{name}/"): v for k, v in m.items()
                     if k.startswith(f"eval/{name}/")}
            if short:
                yield variant + label, short, wall


def tables(results: dict) -> str:
    lines = ["| recipe | " + " | ".join(c for c, _ in RETRIEVAL) +
             " | ITM acc, perturbed | ITM acc, other scene | wall s |",
             "|---" * (len(RETRIEVAL) + 4) + "|"]
    for row, short, wall in by_set(results):
        vals = [f"{short[k]:.3f}" if k in short else "-" for _, k in RETRIEVAL]
        vals = [v + (f" (p={short[k + '_p']:.2g})" if k + "_p" in short else "")
                for v, (_, k) in zip(vals, RETRIEVAL)]
        itm = [cell(short, f"compositional_itm{k}_accuracy") for k in ("", "_other_scene")]
        lines.append(f"| {row} | " + " | ".join(vals + itm) + f" | {wall:.0f} |")
    lines += ["", "| recipe | perturbation | pairs (held out) | " + " | ".join(
        f"{s}" for s in SCORERS) + " | " + " | ".join(f"{s} held out" for s in SCORERS) + " |",
        "|---" * (3 + 2 * len(SCORERS)) + "|"]
    for row, m, _ in by_set(results):
        for kind in KINDS:
            pre = f"compositional_{kind}"
            n = f"{m.get(pre + '_n', 0):.0f} ({m.get(pre + '_heldout_n', 0):.0f})"
            lines.append(f"| {row} | {kind} | {n} | " + " | ".join(
                cell(m, f"{pre}_{s}", f"{pre}_{s}_vs_itc_p") for s in SCORERS) + " | " + " | ".join(
                cell(m, f"{pre}_{s}_heldout") for s in SCORERS) + " |")
    return "\n".join(lines)


def relation(truth: tuple, scenes) -> str:
    """How the closest of `scenes` (those a text describes) differs from the image's `truth`."""
    def one(scene):
        if scene == truth:
            return "right"
        if len(scene) != len(truth):
            return "count"
        if sorted(scene) == sorted(truth):
            return "order"
        if all(sorted(o[a] for o in scene) == sorted(o[a] for o in truth) for a in (0, 1)):
            return "binding"
        changed = [(a, b) for a, b in zip(scene, truth) if a != b]
        if len(changed) > 1:
            return "other"
        (a, b), = changed
        return "colour" if a[1] == b[1] else "kind" if a[0] == b[0] else "object"
    return min(map(one, scenes), key=RELATIONS.index)


def mistakes(workdir: str, k: int = 16) -> dict[str, str]:
    """For each of SETS the workdir's ITM re-ranking scores, what the text ranked first for each
    image is, by similarity and by ITM re-ranking of the top k: a table of RELATIONS counts, and
    how many images move from one to the other (empty for a model without an ITM head)."""
    from vlm_jax import evals
    from vlm_jax.train import evaluate
    s, params, _ = evaluate.restore(workdir)
    with s.context():
        data = evals.Evaluators(s).data
        if not data.embedder.has("itm_logits"):
            return {}
        return {name: _mistakes(data, params, name, k) for name, _ in SETS
                if name in s.config.eval.itm_rerank}


def _mistakes(data, params, dataset: str, k: int) -> str:
    import collections

    from vlm_jax.data import builtin
    from vlm_jax.data.builtin import shapes
    from vlm_jax.evals import compositional, retrieval
    from vlm_jax.evals.itm_rerank import match_score
    objects = [tuple(map(tuple, o)) for o in compositional.read_objects(
        builtin.split_path("shapes", data.spec(dataset).split, data.data_dir))]
    keep, captions = retrieval.usable(data, params, dataset)
    objects = [o for o, kept in zip(objects, keep) if kept]
    texts = sorted({c for caps in captions for c in caps})
    z, tok, mask = data.embedder.texts(params, texts, tokens=True)
    img = data.images(params, dataset)[keep]
    top = retrieval.top_k(img, z, k, data.embedder.mesh, data.embedder.axes)  # as itm_rerank
    img_tokens = data.images(params, dataset, key="img/tokens")[keep]
    itm = data.embedder.batched(data.embedder.head("itm_logits", match_score), params,
                                tok[top.ravel()], mask[top.ravel()],
                                np.repeat(img_tokens, k, axis=0), what="ITM re-ranking")
    itm_first = top[np.arange(len(top)), np.argmax(np.reshape(itm, top.shape), axis=1)]
    scenes = collections.defaultdict(set)
    for o in objects:
        for c in shapes.describe(o):
            scenes[c].add(o)
    by = {name: [relation(o, scenes[texts[j]]) for o, j in zip(objects, first)]
          for name, first in (("similarity", top[:, 0]), ("ITM", itm_first))}
    lines = ["| first text by | " + " | ".join(RELATIONS) + " |", "|---" * (len(RELATIONS) + 1) + "|"]
    for name, rel in by.items():
        count = collections.Counter(rel)
        lines.append(f"| {name} | " + " | ".join(str(count[r]) for r in RELATIONS) + " |")
    moves = collections.Counter(zip(by["similarity"], by["ITM"]))
    lines += ["", "similarity -> ITM, images that changed: " + ", ".join(
        f"{a} -> {b}: {n}" for (a, b), n in moves.most_common() if a != b)]
    return "\n".join(lines)


def share(hits) -> str:
    """The share of right answers with its 95% interval and count."""
    from vlm_jax.evals.stats import wilson
    lo, hi = wilson(float(np.sum(hits)), len(hits))
    return f"{np.mean(hits):.3f} [{lo:.2f}, {hi:.2f}] (n={len(hits)})"


def novelty(rows: list[dict], objects: list, train_scenes: set) -> tuple:
    """Two masks over compositional pairs: its image's scene (the objects left to right) is one
    of `train_scenes`; its false caption names a held-out colour-shape pair."""
    from vlm_jax.data.builtin import shapes
    held = [f"{c} {k}" for c, k in shapes.HELD_OUT]
    return (np.array([tuple(map(tuple, objects[r["index"]])) in train_scenes for r in rows]),
            np.array([any(h in r["false"] for h in held) for r in rows]))


def seen(workdir: str) -> str:
    """On the seen-pair scenes: the ITM head's decisions on images whose scene is one of the
    training scenes and on new ones; each scorer's swap accuracy where the swapped caption names
    a held-out pair (words never seen together in training) and where it does not."""
    from vlm_jax import evals
    from vlm_jax.data import builtin
    from vlm_jax.evals import compositional
    from vlm_jax.train import evaluate
    s, params, _ = evaluate.restore(workdir)
    if "shapes_seen" not in s.config.eval.compositional:
        return None
    with s.context():
        comp = evals.Evaluators(s).evaluators["compositional"]
        objects = comp._objects("shapes_seen")
        valid = comp.data.images(params, "shapes_seen", key="valid")
        rows = [r for r in compositional.pairs(objects) if valid[r["index"]]]
        scores = comp.scores(params, "shapes_seen", rows)
        train = {tuple(map(tuple, o)) for o in compositional.read_objects(
            builtin.split_path("shapes", "train", comp.data.data_dir))}
    known, unseen_false = novelty(rows, objects, train)
    lines = []
    scene = np.array([r["kind"] == "scene" for r in rows])
    if "itm" in scores:
        lines += ["| ITM decisions on | scene in training | new scene |", "|---|---|---|"]
        for what, sel in (("perturbed pairs", ~scene), ("other scenes' captions", scene)):
            cells = [share(np.concatenate([itm[0] > 0, itm[1] < 0]))
                     for itm in (scores["itm"][:, sel & known], scores["itm"][:, sel & ~known])]
            lines.append(f"| {what} | " + " | ".join(cells) + " |")
        lines.append("")
    swap = np.array([r["kind"] == "swap" for r in rows])
    lines += ["| swap scored by | swapped caption names a held-out pair | does not |", "|---|---|---|"]
    for scorer, v in scores.items():
        right = compositional.accuracy(*v)
        lines.append(f"| {scorer} | {share(right[swap & unseen_false])} | "
                     f"{share(right[swap & ~unseen_false])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--root", default="workdirs/shapes")
    p.add_argument("--mistakes", action="store_true", help="for recipes with an ITM head, what "
                   "the first text by similarity and by ITM re-ranking describes")
    p.add_argument("--seen", action="store_true", help="on the seen-pair scenes: ITM decisions "
                   "on training scenes and new ones, swap accuracy by whether the swapped caption "
                   "names a held-out pair")
    args, extra = parse_with_overrides(p, "variants")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    for variant in args.variants or VARIANTS:
        workdir = os.path.join(os.path.abspath(args.root), variant)
        results[variant] = train(f"configs/shapes.py:{variant}", workdir, extra)
    print(tables(results))
    for variant in (args.variants or VARIANTS) if args.mistakes else ():
        tables_by_set = mistakes(os.path.join(os.path.abspath(args.root), variant))
        for name, label in SETS:
            if name in tables_by_set:
                print(f"\n{variant}{label}:\n{tables_by_set[name]}")
    for variant in (args.variants or VARIANTS) if args.seen else ():
        table = seen(os.path.join(os.path.abspath(args.root), variant))
        if table:
            print(f"\n{variant}, seen pairs, by novelty:\n{table}")


if __name__ == "__main__":
    sys.exit(main())
