"""The compositional evaluator: its perturbations are what they claim, and each scorer equals a
direct computation on a tiny model."""
import os

import numpy as np
import pytest
from conftest import tiny_config

from vlm_jax.data import builtin
from vlm_jax.data.builtin import shapes
from vlm_jax.evals import compositional as comp


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
        elif r["kind"] == "order":
            assert sorted(t) == sorted(f) and _pairs_named(r["false"]) == objs[::-1]
        else:
            assert t[1:] == f[1:] and {t[0], f[0]} <= set(shapes.COUNT_WORDS)
            assert t[0] == shapes.COUNT_WORDS[len(objs) - 1]
    assert comp.perturb([("red", "circle")], "swap") is None
    assert comp.perturb([("red", "circle"), ("red", "square")], "swap") is None   # same colour
    assert comp.perturb([("red", "circle"), ("red", "circle")], "order") is None


def test_wilson_interval():
    lo, hi = comp.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert comp.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(comp.accuracy([2, 1, 3], [1, 1, 4]), [1, 0.5, 0])


def test_every_scorer_equals_a_direct_computation(data_dir):
    import jax

    from helpers import jitted_method
    from vlm_jax import evals
    from vlm_jax.data import pipeline
    from vlm_jax.data.tokenizer import tokenize
    from vlm_jax.setup import Setup
    cfg = tiny_config(data_dir, **{"itm.weight": 1.0, "caption.weight": 1.0,
                                   "model.text.causal": True, "eval.retrieval": (),
                                   "eval.zeroshot": (), "eval.compositional": ("shapes",)})
    s = Setup(cfg)
    params = s.init_state().params
    ev = evals.Evaluators(s)
    got = ev.run(params)
    comp_ev = ev.evaluators["compositional"]
    objects = comp_ev._objects("shapes")
    rows = comp.pairs(objects)[::7]                       # a sample of the pairs, every kind
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
    logits = jitted_method(m, m.caption_logits)(params, txt["txt/tokens"], mask, img["img/tokens"])
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))[:, :-1]
    ll = (np.take_along_axis(logp, ids[:, 1:, None], axis=2)[..., 0] * mask[:, 1:]).sum(1)
    want = {"itc": itc, "itm": itm[:, 1] - itm[:, 0], "caption": ll}
    mine = comp_ev.scores(params, "shapes", rows)
    for k, v in want.items():
        np.testing.assert_allclose(mine[k].reshape(-1), v, rtol=2e-4, atol=2e-4, err_msg=k)
    # The reported accuracies are those of the evaluator's scores over every pair.
    full = comp_ev.scores(params, "shapes", comp.pairs(objects))
    assert set(full) == {"itc", "itm", "caption"}
    summary = comp.summarise(comp.pairs(objects), {k: comp.accuracy(*v) for k, v in full.items()})
    assert {k: got[f"eval/shapes/{k}"] for k in summary} == pytest.approx(summary, nan_ok=True)
    decisions = np.concatenate([full["itm"][0] > 0, full["itm"][1] < 0])
    assert got["eval/shapes/compositional_itm_accuracy"] == pytest.approx(decisions.mean())
    other = np.random.default_rng(0).permutation(len(objects))
    rows = [{"index": i, "true": shapes.describe(objects[i])[0],
             "false": shapes.describe(objects[j])[0]}
            for i, j in enumerate(other) if objects[i] != objects[j]]
    itm_other = comp_ev.scores(params, "shapes", rows)["itm"]
    assert got["eval/shapes/compositional_itm_other_scene_accuracy"] == pytest.approx(
        np.concatenate([itm_other[0] > 0, itm_other[1] < 0]).mean())
    assert got["eval/shapes/compositional_count_n"] == 500
