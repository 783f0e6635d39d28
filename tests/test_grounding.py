"""LocCa's grounding tasks: the sequences, the shapes pipeline that builds them from real
regions, and the loss against a direct computation with the model's logits."""
import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config
from helpers import random_params

from vlm_jax import objectives
from vlm_jax.data import images, regions
from vlm_jax.setup import Setup


def test_task_sequences_and_coordinate_tokens():
    box = np.array([0.0, 0.26, 0.5, 0.999])
    ids = regions.coordinate_ids(box, 4, 100)
    np.testing.assert_array_equal(ids, [102, 103, 104, 105])     # bins 0, 1, 2, 3 after 2 tasks
    np.testing.assert_allclose(regions.box_from_ids(ids, 4, 100), [0.125, 0.375, 0.625, 0.875])
    s = regions.task_sequences([7, 8, 9], box, bins=4, vocab_size=100, max_len=12, bos=1, eos=2,
                               pad=0)
    np.testing.assert_array_equal(s["ref_tokens"], [1, 100, 7, 8, 9, 102, 103, 104, 105, 2, 0, 0])
    np.testing.assert_array_equal(s["ref_targets"], [0] * 5 + [1] * 5 + [0] * 2)
    np.testing.assert_array_equal(s["gcap_tokens"], [1, 101, 102, 103, 104, 105, 7, 8, 9, 2, 0, 0])
    np.testing.assert_array_equal(s["gcap_targets"], [0] * 6 + [1] * 4 + [0] * 2)
    np.testing.assert_array_equal(s["ref_mask"], [1] * 10 + [0] * 2)
    # Too long: the words are cut, the box and EOS kept.
    s = regions.task_sequences(list(range(10, 30)), box, bins=4, vocab_size=100, max_len=10,
                               bos=1, eos=2, pad=0)
    np.testing.assert_array_equal(s["ref_tokens"], [1, 100, 10, 11, 12, 102, 103, 104, 105, 2])


def test_shapes_pipeline_writes_each_region_as_both_tasks(data_dir):
    from configs import shapes as recipe
    from vlm_jax.data import pipeline
    from vlm_jax.data.builtin import shapes
    cfg = tiny_config(data_dir, recipe.get_config("coca"), **{
        "grounding.weight": 1.0, "grounding.bins": 16, "batch_size": 32, "data.flip": True})
    s = Setup(cfg)
    batch = next(iter(pipeline.train_dataset(cfg, s.tokenizer)[0]))
    assert set(pipeline.split_skips(batch)[0]) == set(s.batch_keys)     # what the step takes
    tok, v = s.tokenizer, s.tokenizer.vocab_size
    assert batch["region_valid"].all()          # every shapes scene has an object in view
    for i in range(32):
        ref = batch["ref_tokens"][i][batch["ref_mask"][i]]
        coords = ref[batch["ref_targets"][i][batch["ref_mask"][i]]][:4]
        assert ref[1] == v and np.all(coords >= v + 2) and np.all(coords < v + 2 + 16)
        np.testing.assert_array_equal(coords, regions.coordinate_ids(batch["region_box"][i], 16, v))
        x0, y0, x1, y1 = regions.box_from_ids(coords, 16, v)
        assert x0 < x1 and y0 < y1
        words = tok.decode([t for t in ref[2:] if t < v and t != tok.eos_id])
        assert words.split()[0] == "a" and words.split()[2] in shapes.KINDS
        gcap = batch["gcap_tokens"][i][batch["gcap_mask"][i]]
        np.testing.assert_array_equal(gcap[2:6], coords)        # the same region, box first
        assert tok.decode([t for t in gcap[6:] if t < v]) == words


def test_grounding_loss_is_the_captioners_nll_on_the_targets(data_dir):
    cfg = tiny_config(data_dir, **{"grounding.weight": 1.0, "model.text.causal": True,
                                   "grounding.bins": 8})
    s = Setup(cfg)
    params = random_params(s.param_shapes)
    batch = {k: jnp.asarray(v) for k, v in s.synthetic_batch().items()}
    call = lambda method, *a: s.model.apply({"params": params}, *a, method=method)
    out = s.model.apply({"params": params}, batch["image"], batch["tokens"], batch["mask"])
    (obj,) = [w.objective for w in s.objectives if w.objective.name == "grounding"]
    loss, m = jax.jit(lambda b: obj(out, b, objectives.Context(call)))(batch)
    valid = np.asarray(batch["region_valid"])
    assert 0 < valid.sum() < len(valid)
    want = []
    for task in ("ref", "gcap"):
        tokens, mask = batch[f"{task}_tokens"], batch[f"{task}_mask"]
        txt = call("encode_text", tokens, mask)["txt/tokens"]
        logp = np.asarray(jax.nn.log_softmax(call("caption_logits", txt, mask, out["img/tokens"])))
        t = np.asarray(tokens)
        nll = -np.take_along_axis(logp[:, :-1], t[:, 1:, None], axis=2)[..., 0]
        w = np.asarray(batch[f"{task}_targets"])[:, 1:] & valid[:, None]
        want.append((nll * w).sum() / w.sum())
        np.testing.assert_allclose(m[f"{task}_loss"], want[-1], rtol=2e-5)
    np.testing.assert_allclose(loss, np.mean(want), rtol=2e-5)
    assert logp.shape[-1] == s.tokenizer.vocab_size + 2 + 8      # the tasks' tokens are written


def test_refexp_decodes_greedily_and_scores_by_iou(data_dir):
    """The evaluator on the shapes test split with a random tiny model: its greedy decoding
    against a step-by-step one with the model's logits, IoU against hand values, and the box
    prior's accuracy recomputed from the records."""
    from vlm_jax.evals import Evaluators, refexp
    assert np.isclose(refexp.iou(np.array([0, 0, 2, 2.]), np.array([1, 1, 3, 3.])), 1 / 7)
    assert refexp.iou(np.array([0, 0, 1, 1.]), np.array([2, 2, 3, 3.])) == 0
    cfg = tiny_config(data_dir, **{"grounding.weight": 1.0, "model.text.causal": True,
                                   "grounding.bins": 8, "eval.refexp": ("shapes",),
                                   "eval.retrieval": (), "eval.zeroshot": ()})
    s = Setup(cfg)
    params = random_params(s.param_shapes, seed=3)
    ev = Evaluators(s)
    m = ev.run(params)
    n = m["eval/shapes/refexp_n"]
    view = images.View(cfg.data.image_size)
    test = refexp.read_regions(cfg_source(cfg, "test"), data_dir, view)
    truth = np.stack([b for rs in test for b, _ in rs])
    assert n == len(truth) > 500
    assert 0 <= m["eval/shapes/refexp_accuracy"] <= 1
    prior = np.mean([b for rs in refexp.read_regions(cfg_source(cfg, "train"), data_dir, view)
                     for b, _ in rs], axis=0)
    assert m["eval/shapes/refexp_prior_accuracy"] == np.mean(refexp.iou(prior[None], truth) >= 0.5)
    # Greedy decoding, one step at a time, on a few expressions.
    tok, v = s.tokenizer, s.tokenizer.vocab_size
    img = ev.data.images(params, "shapes", key="img/tokens")[:4]
    seqs = [regions.task_sequences(tok.encode(c), np.zeros(4), bins=8, vocab_size=v,
                                   max_len=cfg.tokenizer.max_len, bos=tok.bos_id, eos=tok.eos_id,
                                   pad=tok.pad_id) for c in ("a red circle", "a blue square",
                                                             "a green triangle", "a white circle")]
    tokens = np.stack([q["ref_tokens"] for q in seqs])
    at = np.array([int(np.argmax(q["ref_targets"])) for q in seqs], np.int32)
    mask = np.arange(cfg.tokenizer.max_len)[None] < at[:, None]
    got = refexp._decoder(s.model, v + 2, 8)(params, tokens, mask, img, at)
    logits_of = jax.jit(lambda t, mk, im: s.model.apply(
        {"params": params}, s.model.apply({"params": params}, t, mk, method="encode_text")
        ["txt/tokens"], mk, im, method="caption_logits"))
    for r in range(4):
        t, mk = tokens[r:r + 1].copy(), mask[r:r + 1].copy()
        for k in range(4):
            logits = np.asarray(logits_of(t, mk, img[r:r + 1]))
            t[0, at[r] + k] = v + 2 + int(np.argmax(logits[0, at[r] + k - 1, v + 2:v + 10]))
            mk[0, at[r] + k] = True
        np.testing.assert_array_equal(got[r], t[0, at[r]:at[r] + 4])
    # Each coordinate predicted given the true ones before it, in one pass.
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.9],
                      [0.9, 0.1, 0.95, 0.2]])
    tokens, mask, at = refexp.sequences(ev.data.embedder, ["a red circle", "a blue square",
                                                           "a green triangle", "a white circle"],
                                        boxes, 8)
    given = refexp._given(s.model, v + 2, 8)(params, tokens, mask, img, at)
    logits = np.asarray(logits_of(tokens, mask, img))
    for r in range(4):
        want = [int(np.argmax(logits[r, at[r] + k - 1, v + 2:v + 10])) for k in range(4)]
        np.testing.assert_array_equal(given[r], want)
    # The first coordinate has only the prompt before it either way.
    c = ev.evaluators["refexp"].coordinates(params, "shapes")
    assert c["given_exact"][0] == c["decoded_exact"][0] and all(
        np.all((0 <= x) & (x <= 1)) and x.shape == (4,) for x in c.values())


def cfg_source(cfg, split):
    from vlm_jax.evals import datasets
    return datasets.source(datasets.spec(cfg, "shapes"), split)
