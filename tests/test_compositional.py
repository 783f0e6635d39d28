"""The compositional evaluator: its perturbations are what they claim, and each scorer equals a
direct computation on a tiny model."""
import os

import numpy as np
import pytest
from conftest import tiny_config

from vlm_jax.data import builtin
from vlm_jax.data.builtin import shapes
from vlm_jax.evals import compositional as comp, stats


def _pairs_named(caption: str) -> list[tuple[str, str]]:
    """The (colour, kind) pairs a caption of the first form names, left to right."""
    words = caption.replace(",", "").split()
    return [(words[i], words[i + 1]) for i, w in enumerate(words[:-1]) if w in shapes.COLORS]


def test_perturbations_change_exactly_what_they_claim(data_dir):
    objects = comp.read_objects(os.path.join(builtin.dataset_dir("shapes", data_dir),
                                             "test.array_record"))
    rows = comp.pairs(objects)
    kinds = {k: [r for r in rows if r["kind"] == k] for k in comp.KINDS}
    assert len(kinds["count"]) == len(objects)                # every image has a count
    assert all(len(kinds[k]) > 100 for k in comp.KINDS)
    assert 0 < sum(r["held_out"] for r in kinds["swap"]) < len(kinds["swap"])
    for r in rows:
        objs = [tuple(o) for o in objects[r["index"]]]
        t, f = r["true"].replace(",", "").split(), r["false"].replace(",", "").split()
        assert r["true"] in shapes.describe(objs) and r["true"] != r["false"]
        if r["kind"] == "swap":
            diff = [i for i, (a, b) in enumerate(zip(t, f)) if a != b]
            assert len(t) == len(f) and len(diff) == 2, r
            assert all(t[i] in shapes.COLORS and f[i] in shapes.COLORS for i in diff)
            named = _pairs_named(r["false"])
            assert sorted(named) != sorted(objs)              # a different set of objects
            assert any(p not in objs for p in named), r       # one the image does not hold
        elif r["kind"] == "scene":     # another test scene's caption, with other objects
            other = [[tuple(o) for o in x] for x in objects if shapes.describe(x)[0] == r["false"]]
            assert other and all(x != objs for x in other)
        elif r["kind"] == "order":
            assert sorted(t) == sorted(f) and _pairs_named(r["false"]) == objs[::-1]
        else:       # one object more (the last repeated) or fewer, the count word to match
            named = _pairs_named(r["false"])
            assert named == (objs[:-1] if len(objs) == 3 else objs + objs[-1:]), r
            assert t[0] == shapes.COUNT_WORDS[len(objs) - 1]
            assert f[0] == shapes.COUNT_WORDS[len(named) - 1]
            assert r["held_out"] == (objs[-1] in shapes.HELD_OUT)
    assert comp.perturb([("red", "circle")], "swap") is None
    assert comp.perturb([("red", "circle"), ("red", "square")], "swap") is None   # same colour
    assert comp.perturb([("red", "circle"), ("red", "circle")], "order") is None


def test_negative_captions_are_false_and_name_no_held_out_pair(data_dir):
    """The records' negative captions (ITM's text negatives): each one a colour swap between two
    objects (naming a pair the scene does not hold) or the order reversed; none true of the
    scene, none naming a held-out pair; a scene of one object, or of identical ones, has none."""
    import grain
    from vlm_jax.data import records
    path = os.path.join(builtin.dataset_dir("shapes", data_dir), "train.array_record")
    ds = grain.sources.ArrayRecordDataSource([path])
    held, counted = {tuple(p) for p in shapes.HELD_OUT}, 0
    for i in range(0, len(ds), 7):
        ex = records.unpack(ds[i], i)
        objs = [tuple(o) for o in ex["objects"]]
        negatives = ex["negative_captions"]
        assert negatives == shapes.negative_captions(objs)
        if len(set(objs)) == 1:
            assert negatives == []
        for neg in negatives:
            counted += 1
            assert neg not in shapes.describe(objs)
            scenes = [new for _, _, new in shapes.swaps(objs)] + [objs[::-1]]
            scene = next(s for s in scenes if neg in shapes.describe(s))
            assert held.isdisjoint(scene), neg
            if scene != objs[::-1]:
                assert any(p not in objs for p in scene), neg
    assert counted > 500


def test_wilson_interval_and_mcnemar():
    from scipy import stats as sp
    lo, hi = stats.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert stats.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(comp.accuracy([2, 1, 3], [1, 1, 4]), [1, 0.5, 0])
    rng = np.random.default_rng(0)
    for n, p in ((40, 0.5), (500, 0.55), (3000, 0.5)):
        a, b = rng.random(n) < p, rng.random(n) < 0.5
        only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
        want = sp.binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert stats.mcnemar(a, b) == pytest.approx(want, rel=1e-9)
        assert stats.mcnemar(b, a) == pytest.approx(want, rel=1e-9)
    assert stats.mcnemar([True, False], [True, False]) == 1.0
    # The pairs' other images for p(caption): never the pair's own, spread over the rest.
    idx = np.arange(500) % 7
    others = comp.marginal_images(idx, 7, 50)
    assert others.shape == (50, 500) and not (others == idx).any()
    assert set(np.unique(others)) == set(range(7))


def test_every_scorer_equals_a_direct_computation(data_dir):
    import jax
    from scipy.special import logsumexp

    from helpers import jitted_method, random_params
    from vlm_jax import evals
    from vlm_jax.data import pipeline
    from vlm_jax.data.tokenizer import tokenize
    from vlm_jax.setup import Setup
    cfg = tiny_config(data_dir, **{"itm.weight": 1.0, "caption.weight": 1.0,
                                   "model.text.causal": True, "eval.retrieval": (),
                                   "eval.zeroshot": (), "eval.compositional": ("shapes",),
                                   "eval.marginal_images": 2})
    s = Setup(cfg)
    params = random_params(s.param_shapes)
    ev = evals.Evaluators(s)
    comp_ev = ev.evaluators["compositional"]
    scored = []     # the scores behind the reported figures, as the evaluator computed them
    score = comp_ev.scores
    comp_ev.scores = lambda *args: scored.append(score(*args)) or scored[-1]
    got = ev.run(params)
    comp_ev.scores = score
    objects = comp_ev._objects("shapes")
    rows = comp.pairs(objects)[::13]                      # a sample of the pairs, every kind
    # Direct: the model's own methods on the images held in memory and the captions tokenized.
    m = s.model
    pixels = pipeline.load_split("shapes", "test", data_dir, cfg.data.image_size)["image"]
    idx = np.array([r["index"] for r in rows] * 2)
    texts = [r["true"] for r in rows] + [r["false"] for r in rows]
    ids, mask = tokenize(s.tokenizer, texts, cfg.tokenizer.max_len)
    img = jitted_method(m, m.encode_image)(params, pixels[idx])
    txt = jitted_method(m, m.encode_text)(params, ids, mask)
    itc = np.sum(np.asarray(img["img/normed"]) * np.asarray(txt["txt/normed"]), axis=1)
    itm = np.asarray(jitted_method(m, m.itm_logits)(params, txt["txt/tokens"], mask,
                                                    img["img/tokens"]))
    def log_likelihood(image_tokens):
        logits = jitted_method(m, m.caption_logits)(params, txt["txt/tokens"], mask, image_tokens)
        logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))[:, :-1]
        return (np.take_along_axis(logp, ids[:, 1:, None], axis=2)[..., 0] * mask[:, 1:]).sum(1)

    ll = log_likelihood(img["img/tokens"])
    # p(caption): the mean likelihood over other images, the same ones for both captions
    others = [jitted_method(m, m.encode_image)(params, pixels[np.tile(o, 2)])["img/tokens"]
              for o in comp.marginal_images(idx[:len(rows)], len(pixels), 2)]
    marginal = logsumexp([log_likelihood(t) for t in others], axis=0) - np.log(len(others))
    want = {"itc": itc, "itm": itm[:, 1] - itm[:, 0], "caption": ll,
            "caption_debiased": ll - marginal}
    mine = comp_ev.scores(params, "shapes", rows)
    for k, v in want.items():
        np.testing.assert_allclose(mine[k].reshape(-1), v, rtol=2e-4, atol=2e-4, err_msg=k)
    # The reported figures are those of the evaluator's scores of every pair, in one pass.
    full, = scored
    scene = np.array([r["kind"] == "scene" for r in comp.pairs(objects)])
    assert set(full) == set(want)
    summary = comp.summarise(comp.pairs(objects), {k: comp.accuracy(*v) for k, v in full.items()})
    assert {k: got[f"eval/shapes/{k}"] for k in summary} == pytest.approx(summary, nan_ok=True)
    assert "compositional_swap_caption_debiased_vs_itc_p" in summary
    for name, keep in (("itm_accuracy", ~scene), ("itm_other_scene_accuracy", scene)):
        decisions = np.concatenate([full["itm"][0, keep] > 0, full["itm"][1, keep] < 0])
        assert got[f"eval/shapes/compositional_{name}"] == pytest.approx(decisions.mean())
    assert scene.sum() > 450 and got["eval/shapes/compositional_count_n"] == 500
