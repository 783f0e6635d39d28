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
    data = {}
    for split in ("train", "test"):
        x = ev.data.images(params, "shapes", split, "img/tokens")[:, -n:]
        layouts = dense_probe.read_layouts(dense_probe.datasets.source(spec, split), data_dir)
        y = np.concatenate([np.array([0] + [colours.index(o[0]) for o in objs])[
            dense_probe.patch_labels(seg, 32, patch)] for seg, objs in layouts])
        data[split] = (x.reshape(-1, x.shape[-1]).astype(np.float64), y)
    w, b = ridge_fit(*data["train"], len(colours), cfg.eval.probe_l2)
    x, y = data["test"]
    hit = np.argmax(x @ w + b, axis=1) == y
    assert m["eval/shapes/dense_object_patches"] == (y > 0).sum() > 500
    np.testing.assert_allclose(m["eval/shapes/dense_colour_accuracy"], hit.mean())
    np.testing.assert_allclose(m["eval/shapes/dense_colour_accuracy_object"], hit[y > 0].mean())
    assert 0 <= m["eval/shapes/dense_kind_accuracy_object"] <= 1
