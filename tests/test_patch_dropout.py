"""Patch dropout (FLIP): in the train step the image tower sees a uniform random subset of each
image's patches, the same on every mesh and in micro-batches; evaluation sees them all."""
import itertools

import jax
import numpy as np
import pytest
from conftest import make_mesh, tiny_config
from helpers import assert_same_update, loss_and_grads, one_step, random_params

from vlm_jax import config as config_lib
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


def test_every_patch_kept_is_the_plain_forward(data_dir):
    s = Setup(tiny_config(data_dir, **{"model.image.pool": "cls"}), mesh=make_mesh(1))
    params = random_params(s.param_shapes)
    batch = s.synthetic_batch()
    n = (s.config.data.image_size // s.config.model.image.patch_size) ** 2
    every = np.broadcast_to(np.arange(n), (len(batch["image"]), n))
    plain = forward_lib.forward(s.model, params, batch)
    kept = forward_lib.forward(s.model, params, {**batch, "visible": every})
    for key in ("img/normed", "img/tokens", "txt/normed"):
        np.testing.assert_array_equal(kept[key], plain[key], err_msg=key)
    # The class token is always there, first, after the kept patches' selection.
    half = forward_lib.forward(s.model, params, {**batch, "visible": every[:, :n // 2]})
    assert half["img/tokens"].shape[1] == 1 + n // 2


@pytest.mark.slow
def test_patch_dropout_step_is_the_same_on_1_and_8_devices_and_in_micro_batches(data_dir):
    """Half of the patches dropped: one step on 1 device, on 8 and in 2 micro-batches on 2 (the
    subset drawn once for the whole batch) give the same update; its loss is the objectives'
    on the model shown exactly the drawn patches, and differs from the plain step's."""
    cfg = lambda **kw: tiny_config(data_dir, **{"model.image.patch_dropout": 0.5, **kw})
    one = one_step(cfg(), 1)
    assert_same_update(one, one_step(cfg(), 8, batch=one[2]))
    assert_same_update(one, one_step(cfg(microbatches=2), 2, batch=one[2]))
    s = Setup(cfg(), mesh=make_mesh(1))
    n, batch = 4, one[2]                                # 16 px images, 8 px patches
    visible, _ = patch_mask(jax.random.fold_in(jax.random.fold_in(s.step_rng, 0),
                                               forward_lib.PATCH_DROPOUT_STREAM), 16, n, 0.5)
    params = random_params(s.param_shapes)
    loss, _ = loss_and_grads(s, params, {**batch, "visible": visible}, s.objectives)
    assert float(one[1]["loss"]) == pytest.approx(float(loss), rel=1e-5)
    plain, _ = loss_and_grads(s, params, batch, s.objectives)
    assert abs(float(plain) - float(loss)) > 1e-4


def test_patch_dropout_config_errors(data_dir):
    for bad in (-0.1, 1.0):
        with pytest.raises(config_lib.ConfigError, match="model.image.patch_dropout"):
            config_lib.validate(tiny_config(data_dir, **{"model.image.patch_dropout": bad}))
