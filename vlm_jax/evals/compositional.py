"""Compositional evaluation on the built-in shapes (ARO / Winoground-style): each test image's
true caption against the same caption perturbed one way, the model asked which is right.

Perturbations of an image whose objects are, left to right, (colour, kind) pairs:
- swap: the colours of the first two objects that differ in both colour and kind exchanged
  ("a red circle left of a blue square" -> "a blue circle left of a red square"); the caption
  then names a colour-kind pair the image does not hold;
- order: the objects listed in reverse ("... left of ..." with its two sides exchanged, or the
  three from right to left), where that changes the caption;
- count: the caption with a count word describing one object more or fewer: the last object
  repeated (one, two objects: "one red circle" -> "two shapes: a red circle and a red circle")
  or dropped (three: "three shapes: a, b, c" -> "two shapes: a and b"). The perturbed caption
  is a consistent sentence about a scene next to the image's, so no scorer can reject it
  without looking (changing the count word alone would contradict the objects listed);
- scene: another test scene's caption (a fixed random scene with other objects): the easy case,
  the negatives ITM sees before its mining gets hard.
Each is built from the dataset's own caption forms (`shapes.describe`), so the two captions
differ only in the perturbed words. An image takes part in a kind where the perturbation
exists; it counts as held out when the objects perturbed include a colour-shape pair never seen
in training (`shapes.HELD_OUT`).

Scorers, where the model has them: itc (cosine similarity of the embeddings), itm (the match
head's logit difference), caption (the caption decoder's log-likelihood of the caption's tokens
given the image) and caption_debiased: log p(c | image) - log p(c), p(c) estimated as the mean
of p(c | image') over `eval.marginal_images` other test images drawn at random, the same for both
captions of a pair. Dividing by p(c) takes out the language prior, which favours captions of
familiar colour-shape pairs whatever the image shows (the pointwise mutual information of
caption and image; VisualGPTScore's debiasing, Lin et al. 2023, with the marginal in place of a
null image: a blank image's own bias, towards fewer objects, showed in the count kind).

The share of images whose true caption scores higher (ties: half) is reported with its 95%
Wilson interval: `compositional_<kind>_<scorer>` and `..._lo`, `..._hi`, the same on the
held-out subset (`..._heldout`), the counts `compositional_<kind>_n`, `..._heldout_n`, and each
scorer's exact McNemar p-value against ITC on the same pairs
(`compositional_<kind>_<scorer>_vs_itc_p`; below 0.05 the two differ by more than noise).
Chance is 0.5. With an ITM head, also the head's own decisions on every pair,
`compositional_itm_accuracy` (true caption: match, perturbed: no match; answering "no match"
always scores 0.5), with its interval, and the same on the scene pairs
(`compositional_itm_other_scene_accuracy`). These need the head calibrated (a threshold at 0);
the pairwise `compositional_<kind>_itm` does not.
"""
from __future__ import annotations

import grain
import numpy as np

from vlm_jax.data import builtin, records
from vlm_jax.data.builtin import shapes
from vlm_jax.data.tokenizer import tokenize
from vlm_jax.evals.itm_rerank import match_score
from vlm_jax.evals.stats import mcnemar, wilson

KINDS = ("swap", "order", "count", "scene")
SCORERS = {"itc": None, "itm": "itm_logits", "caption": "caption_logits",
           "caption_debiased": "caption_logits"}                       # -> the head needed


def _counted(objects) -> str:
    return shapes.describe(objects)[2 if len(objects) == 2 else 1]     # the form with a count


def perturb(objects: list[tuple[str, str]], kind: str):
    """(true caption, perturbed caption, which objects were perturbed) or None."""
    objects = [tuple(o) for o in objects]
    n = len(objects)
    if kind == "count":
        new = objects[:-1] if n == len(shapes.COUNT_WORDS) else objects + objects[-1:]
        return _counted(objects), _counted(new), (n - 1,)
    if n == 1:
        return None
    if kind == "swap":
        for i, j, new in shapes.swaps(objects):     # the first pair that can be swapped
            return shapes.describe(objects)[0], shapes.describe(new)[0], (i, j)
        return None
    if kind == "order":
        new = objects[::-1]
        if new == objects:
            return None
        return shapes.describe(objects)[0], shapes.describe(new)[0], tuple(range(n))
    raise ValueError(f"unknown perturbation {kind!r}; choose from {KINDS}")


def pairs(objects_per_image) -> list[dict]:
    """Every (image, kind) with its two captions and whether it touches a held-out pair; kind
    `scene` pairs each image with another scene's caption (a fixed random one that differs)."""
    held = {tuple(p) for p in shapes.HELD_OUT}
    objects_per_image = [[tuple(o) for o in objs] for objs in objects_per_image]
    other = np.random.default_rng(0).permutation(len(objects_per_image))
    out = []
    for index, objects in enumerate(objects_per_image):
        for kind in KINDS:
            if kind == "scene":
                new = objects_per_image[other[index]]
                p = None if new == objects else (shapes.describe(objects)[0],
                                                 shapes.describe(new)[0], range(len(objects)))
            else:
                p = perturb(objects, kind)
            if p is not None:
                out.append({"index": index, "kind": kind, "true": p[0], "false": p[1],
                            "held_out": any(objects[i] in held for i in p[2])})
    return out


def accuracy(true_scores, false_scores) -> np.ndarray:
    """Per pair: 1 where the true caption scores higher, 0.5 on a tie, else 0."""
    t, f = np.asarray(true_scores), np.asarray(false_scores)
    return (t > f) + 0.5 * (t == f)


def summarise(rows: list[dict], correct: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    kinds = np.array([r["kind"] for r in rows])
    held = np.array([r["held_out"] for r in rows])
    for kind in KINDS:
        for subset, keep in (("", kinds == kind), ("_heldout", (kinds == kind) & held)):
            n = int(keep.sum())
            out[f"compositional_{kind}{subset}_n"] = float(n)
            for scorer, c in correct.items():
                name = f"compositional_{kind}_{scorer}{subset}"
                k = float(c[keep].sum())
                out[name] = k / n if n else float("nan")
                out[name + "_lo"], out[name + "_hi"] = wilson(k, n)
        for scorer, c in correct.items():     # the same pairs: is the difference noise?
            if scorer != "itc" and "itc" in correct:
                keep = kinds == kind
                out[f"compositional_{kind}_{scorer}_vs_itc_p"] = mcnemar(
                    c[keep] == 1, correct["itc"][keep] == 1)
    return out


def marginal_images(index: np.ndarray, n: int, k: int, seed: int = 0) -> np.ndarray:
    """[k, pairs] test images other than each pair's own (fixed seed), for estimating p(c)."""
    draw = np.random.default_rng(seed).integers(n - 1, size=(k, len(index)))
    return draw + (draw >= index)       # skip the pair's own image


def _nll(nll_and_hit):     # module-level: the embedder's jitted heads are cached by function
    return nll_and_hit[0]


def read_objects(path: str) -> list[list]:
    """Each record's objects (left to right) of a shapes split file."""
    ds = grain.sources.ArrayRecordDataSource([path])
    return [records.unpack(ds[i], f"record #{i} of {path}").get("objects") for i in range(len(ds))]


class Evaluator:
    image_keys = ("img/normed", "img/tokens")

    def __init__(self, data, config):
        self.data, self.marginal = data, config.eval.marginal_images

    def _objects(self, dataset: str) -> list[list]:
        s = self.data.spec(dataset)
        if s.kind != "builtin" or s.path != "shapes":
            raise ValueError(f"eval.compositional: {dataset!r} is not the built-in shapes (its "
                             "records must list their objects)")
        return read_objects(builtin.split_path("shapes", s.split, self.data.data_dir))

    def scores(self, params, dataset: str, rows: list[dict]) -> dict[str, np.ndarray]:
        """scorer -> [2, pairs] scores of the true and the perturbed captions."""
        emb = self.data.embedder
        idx = np.array([r["index"] for r in rows])
        texts = [r["true"] for r in rows] + [r["false"] for r in rows]
        z, tok, mask = emb.texts(params, texts, tokens=True)
        img = np.concatenate([idx, idx])
        out = {"itc": np.sum(z * self.data.images(params, dataset)[img], axis=1)}
        tokens = self.data.images(params, dataset, key="img/tokens")[img]
        if emb.has("itm_logits"):
            out["itm"] = emb.batched(emb.head("itm_logits", match_score), params, tok, mask,
                                     tokens, what="ITM scores")
        if emb.has("caption_logits"):
            ids, _ = tokenize(emb.tokenizer, texts, emb.max_len)
            ll = lambda t: -(emb.batched(emb.head("caption_logits", _nll), params, tok, mask, t,
                                         ids[:, 1:], what="caption likelihoods") * mask[:, 1:]
                             ).sum(axis=1)
            out["caption"] = ll(tokens)
            all_tokens = self.data.images(params, dataset, key="img/tokens")
            others = marginal_images(idx, len(all_tokens), self.marginal)
            marginal = np.stack([ll(all_tokens[np.concatenate([o, o])]) for o in others])
            top = marginal.max(axis=0)     # log of the mean likelihood, without underflow
            out["caption_debiased"] = out["caption"] - top - np.log(
                np.exp(marginal - top).mean(axis=0))
        return {k: v.reshape(2, len(rows)) for k, v in out.items()}

    def run(self, params, dataset: str) -> dict[str, float]:
        objects = self._objects(dataset)
        valid = self.data.images(params, dataset, key="valid")
        rows = [r for r in pairs(objects) if valid[r["index"]]]
        scores = self.scores(params, dataset, rows)
        out = summarise(rows, {k: accuracy(*v) for k, v in scores.items()})
        if "itm" in scores:     # the head's own decisions: true captions match, the others not
            scene = np.array([r["kind"] == "scene" for r in rows])
            out.update(_decisions("compositional_itm_accuracy", scores["itm"][:, ~scene]))
            out.update(_decisions("compositional_itm_other_scene_accuracy",
                                  scores["itm"][:, scene]))
        return out


def _decisions(name: str, itm: np.ndarray) -> dict[str, float]:
    """The ITM head's accuracy on [2, n] scores of true (match) and false (no match) captions,
    with its 95% interval."""
    hits = np.concatenate([itm[0] > 0, itm[1] < 0])
    lo, hi = wilson(float(hits.sum()), len(hits))
    return {name: float(hits.mean()), name + "_lo": lo, name + "_hi": hi}
