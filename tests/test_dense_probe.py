"""The dense probe: patch labels from a segmentation, and the evaluator on the built-in shapes."""
import numpy as np
from conftest import tiny_config
from helpers import random_params

from vlm_jax.evals import Evaluators, dense_probe
from vlm_jax.setup import Setup


def test_patch_labels_take_the_object_covering_half_a_patch():
    seg = np.zeros((8, 8), np.uint8)
    seg[0:4, 0:2] = 1            # half of patch (0, 0): labelled 1
    seg[0:1, 4:8] = 2            # a quarter of patch (0, 1): background
    seg[4:8, 4:8] = 2            # all of patch (1, 1)
    seg[4:6, 0:3] = 3            # 6 of 16 pixels of patch (1, 0): background
    np.testing.assert_array_equal(dense_probe.patch_labels(seg, 8, 4), [1, 0, 0, 2])
    # The view resized (nearest) first: 16 px with 8 px patches, the same answer.
    np.testing.assert_array_equal(dense_probe.patch_labels(seg, 16, 8), [1, 0, 0, 2])


def test_dense_probe_on_shapes(data_dir):
    """The evaluator's figures against a direct fit on the same patch tokens (a random tower)."""
    from vlm_jax.evals.linear_probe import ridge_fit
    from vlm_jax.data.builtin import shapes
    cfg = tiny_config(data_dir, **{"eval.dense_probe": ("shapes",), "eval.retrieval": (),
                                   "eval.zeroshot": (), "data.image_size": 32})
    s = Setup(cfg)
    ev = Evaluators(s)
    params = random_params(s.param_shapes)
    m = ev.run(params)
    patch, n = cfg.model.image.patch_size, (32 // cfg.model.image.patch_size) ** 2
    spec = dense_probe.datasets.spec(cfg, "shapes")
    colours = ["background"] + sorted(shapes.COLORS)
    kinds = ["background"] + sorted(shapes.KINDS)
    data = {}
    for split in ("train", "test"):
        x = ev.data.images(params, "shapes", split, "img/tokens")[:, -n:]
        layouts = dense_probe.read_layouts(dense_probe.datasets.source(spec, split), data_dir)
        y = {a: np.concatenate([np.array([0] + [names.index(o[k]) for o in objs])[
            dense_probe.patch_labels(seg, 32, patch)] for seg, objs in layouts])
            for k, (a, names) in enumerate((("colour", colours), ("kind", kinds)))}
        data[split] = (x.reshape(-1, x.shape[-1]).astype(np.float64), y)
    (tx, ty), (x, y) = data["train"], data["test"]
    w, b = ridge_fit(tx, ty["colour"], len(colours), cfg.eval.probe_l2)
    hit = np.argmax(x @ w + b, axis=1) == y["colour"]
    obj = y["colour"] > 0
    assert m["eval/shapes/dense_object_patches"] == obj.sum() > 500
    np.testing.assert_allclose(m["eval/shapes/dense_colour_accuracy"], hit.mean())
    np.testing.assert_allclose(m["eval/shapes/dense_colour_accuracy_object"], hit[obj].mean())
    assert 0 <= m["eval/shapes/dense_kind_accuracy_object"] <= 1
    # Kind, fit on the colours no held-out pair has (seen as every kind), scored on the other
    # colours' objects: of held-out pairs, and of the pairs seen in training.
    free = [colours.index(c) for c in shapes.COLORS if c not in dict(shapes.HELD_OUT)]
    assert len(free) == 2
    fit = np.isin(ty["colour"], free) & (ty["kind"] > 0)
    w, b = ridge_fit(tx[fit], ty["kind"][fit] - 1, len(shapes.KINDS), cfg.eval.probe_l2)
    hit = np.argmax(x @ w + b, axis=1) + 1 == y["kind"]
    held = np.array([(colours[c], kinds[k]) in shapes.HELD_OUT
                     for c, k in zip(y["colour"], y["kind"])])
    rest = obj & ~np.isin(y["colour"], free)
    for name, group in (("seen_pair", rest & ~held), ("unseen_pair", rest & held)):
        assert m[f"eval/shapes/dense_kind_{name}_patches"] == group.sum() > 100
        np.testing.assert_allclose(m[f"eval/shapes/dense_kind_accuracy_{name}"], hit[group].mean())
    assert not any("dense_colour_accuracy_seen" in k for k in m)   # no kind is seen in every colour
