"""Patch dropout (FLIP): in the train step the image tower sees a uniform random subset of each
image's patches; evaluation sees them all. (The same subset on every mesh, with scanned and
rematerialised blocks and in micro-batches: test_sharding.py's 3-D mesh step.)"""
import itertools

import jax
import numpy as np
import pytest
from conftest import make_mesh, tiny_config
from helpers import one_step, random_params

from vlm_jax import config as config_lib, objectives
from vlm_jax.losses.masked import patch_mask
from vlm_jax.setup import Setup
from vlm_jax.train import forward as forward_lib


def test_kept_patches_are_a_uniform_subset_of_each_image():
    """Keeping 3 of 6 patches: each of the 20 subsets drawn alike (chi-square over 20,000
    examples), a fresh one per example."""
    visible, masked = map(np.asarray, patch_mask(jax.random.key(3), 20000, 6, 0.5))
    assert visible.shape == (20000, 3) and (np.diff(visible, axis=1) > 0).all()
    assert (masked.sum(1) == 3).all()
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(6), 3))}
    counts = np.bincount([subsets[tuple(v)] for v in visible], minlength=20)
    chi2 = ((counts - 1000.0) ** 2 / 1000.0).sum()
    assert chi2 < 43.8, counts          # the 99.9% point of chi-square with 19 degrees of freedom


def test_the_step_shows_the_tower_the_drawn_patches(data_dir):
    """One step with half the patches dropped: its loss is the objectives' on the model shown
    exactly the patches drawn from the step's stream, and differs from the plain loss; shown
    every patch, the model is the plain one, bit for bit (class token pooling: the token stays
    first, whatever is kept)."""
    cfg = tiny_config(data_dir, **{"model.image.patch_dropout": 0.5, "model.image.pool": "cls"})
    _, metrics, batch, _ = one_step(cfg, 1)
    s = Setup(cfg, mesh=make_mesh(1))
    params = random_params(s.param_shapes)
    n = (cfg.data.image_size // cfg.model.image.patch_size) ** 2         # 4 patches
    stream = jax.random.fold_in(jax.random.fold_in(s.step_rng, 0), forward_lib.PATCH_DROPOUT_STREAM)
    visible, _ = patch_mask(stream, len(batch["image"]), n, 0.5)
    loss = lambda out: float(objectives.total_loss(s.objectives, out, batch)[0])
    half = forward_lib.forward(s.model, params, {**batch, "visible": visible})
    assert half["img/tokens"].shape[1] == 1 + n // 2
    assert float(metrics["loss"]) == pytest.approx(loss(half), rel=1e-5)
    out = forward_lib.forward(s.model, params, batch)
    assert abs(loss(out) - loss(half)) > 1e-4
    every = np.broadcast_to(np.arange(n), (len(batch["image"]), n))
    kept = forward_lib.forward(s.model, params, {**batch, "visible": every})
    for key in ("img/normed", "img/tokens", "txt/normed"):
        np.testing.assert_array_equal(kept[key], out[key], err_msg=key)


def test_patch_dropout_config_errors(data_dir):
    for bad in (-0.1, 1.0):
        with pytest.raises(config_lib.ConfigError, match="model.image.patch_dropout"):
            config_lib.validate(tiny_config(data_dir, **{"model.image.patch_dropout": bad}))
