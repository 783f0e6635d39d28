"""Position embeddings that follow the image size and text length on load."""
import jax
import numpy as np
import pytest
from conftest import tiny_config
from helpers import random_params
from PIL import Image

from vlm_jax.models import posemb
from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint


def _pil(pe: np.ndarray, side: int, grid: int) -> np.ndarray:
    """PIL's bilinear resize of each channel (antialiased when shrinking): the reference."""
    image = pe.reshape(side, side, -1)
    return np.stack([np.asarray(Image.fromarray(image[..., c], mode="F").resize(
        (grid, grid), Image.BILINEAR)) for c in range(image.shape[-1])], -1).reshape(grid * grid, -1)


def test_resampled_image_embeddings_are_a_2d_interpolation():
    pe = np.random.default_rng(0).normal(size=(14 * 14, 6)).astype(np.float32)
    for grid in (4, 7, 10, 24, 28):             # shrinking (antialiased) and growing
        np.testing.assert_allclose(posemb.resample_2d(pe, (grid, grid)), _pil(pe, 14, grid),
                                   atol=1e-5, err_msg=str(grid))
    assert posemb.resample_2d(pe, (14, 14)) is pe                       # unchanged: the same
    with pytest.raises(ValueError, match="not a square"):
        posemb.resample_2d(pe[:-1], (4, 4))


def test_a_checkpoint_loads_into_another_image_size_and_text_length(data_dir):
    """16 px images at 8 px patches (2 x 2) and 24 tokens, loaded into 32 px (4 x 4) and 16
    tokens, and into 40 tokens: the image grid resampled, the text cut or extended with the
    model's own initialisation; every other param as saved."""
    small = random_params(Setup(tiny_config(data_dir)).param_shapes, seed=1)
    for size, length in ((32, 16), (16, 40)):
        s = Setup(tiny_config(data_dir, **{"data.image_size": size, "tokenizer.max_len": length}))
        fresh = jax.device_put(random_params(s.param_shapes, seed=2))
        out, report = checkpoint.load_params(fresh, small, ((".*", True),))
        out, fresh = jax.device_get(out), jax.device_get(fresh)
        side = size // 8
        np.testing.assert_allclose(out["img"]["posemb"], _pil(small["img"]["posemb"], 2, side),
                                   atol=1e-5)
        txt, saved = out["txt"]["posemb"], small["txt"]["posemb"]
        n = min(length, 24)
        np.testing.assert_array_equal(txt[:n], saved[:n])
        np.testing.assert_array_equal(txt[n:], fresh["txt"]["posemb"][n:])
        np.testing.assert_array_equal(out["img"]["embedding"]["kernel"],
                                      small["img"]["embedding"]["kernel"])
        assert len(report["resized"]) == (2 if size != 16 else 1), report["resized"]
    # Other params of another shape still stop the load, by name.
    wide = Setup(tiny_config(data_dir, **{"model.embed_dim": 24}))
    with pytest.raises(checkpoint.InitError, match="img_proj"):
        checkpoint.load_params(jax.device_put(random_params(wide.param_shapes)), small,
                               ((".*", True),))


def test_a_stage_continues_the_optimizer_and_schedule_at_another_size(data_dir, tmp_path):
    """Stage 1 (16 px, 24 tokens) stops at step 4 of 8; stage 2 (32 px, 16 tokens, half the
    patches dropped) starts from it as the trainer does (config.resume): the same step and
    optimizer moments (the position embeddings' fitted like the params), and its next step
    takes the schedule's learning rate at step 4."""
    from vlm_jax import rules
    from vlm_jax.data import pipeline
    from vlm_jax.train import trainer
    quiet = {"eval.zeroshot": (), "eval.retrieval": (), "optim.warmup_steps": 2}
    first = tiny_config(data_dir, stop_at_steps=4, **quiet)
    trainer.train(first, str(tmp_path / "low"))
    second = tiny_config(data_dir, resume=str(tmp_path / "low"), **{
        "data.image_size": 32, "tokenizer.max_len": 16, "model.image.patch_dropout": 0.5, **quiet})
    s1, s2 = Setup(first), Setup(second)
    saved = checkpoint.Checkpointer(str(tmp_path / "low"), async_save=False)
    try:
        assert saved.latest_step() == 4
        low = jax.device_get(saved.restore(4, s1.abstract_state()))
    finally:
        saved.close()
    fresh = checkpoint.Checkpointer(str(tmp_path / "high"), async_save=False)
    try:
        start, state = trainer._start(s2, fresh, None, str(tmp_path / "high"))
    finally:
        fresh.close()
    high = jax.device_get(state)
    assert start == 4 and int(high.step) == 4
    low_flat, high_flat = (dict(zip(rules.tree_paths(t), jax.tree.leaves(t)))
                           for t in (low.opt_state, high.opt_state))
    assert set(low_flat) == set(high_flat)
    for path, value in low_flat.items():
        if path.endswith("img/posemb"):         # the 2 x 2 grid's moments resampled to 4 x 4
            np.testing.assert_allclose(high_flat[path], _pil(value, 2, 4), atol=1e-6)
        elif path.endswith("txt/posemb"):       # cut to 16 positions
            np.testing.assert_array_equal(high_flat[path], value[:16])
        else:
            np.testing.assert_array_equal(high_flat[path], value, err_msg=path)
    with s2.context():
        _, m = s2.train_step()(state, pipeline.to_global(s2.synthetic_batch(), s2.batch_sh),
                               s2.step_rng)
    assert float(m["lr"]) == pytest.approx(float(s2.schedule(4)), rel=1e-6)
    assert float(s2.schedule(4)) < float(s2.schedule(2))          # past warm-up, decaying


def test_the_two_stage_recipes():
    from configs import clipa, flip
    from vlm_jax import config as config_lib
    for recipe in (flip, clipa):
        first, rest = recipe.get_config(), recipe.get_config("W/first")
        for c in (first, rest):
            config_lib.validate(c)
        assert first.stop_at_percent and not first.resume and rest.resume == "W/first"
        assert rest.stop_at_percent is None and rest.total_steps == first.total_steps
    assert flip.get_config().model.image.patch_dropout == 0.5
    assert flip.get_config("W").model.image.patch_dropout == 0.0
    assert (clipa.get_config().data.image_size, clipa.get_config("W").data.image_size) == (16, 32)
    # The same first stages at the published scale (NAME+STAGE; the second stage is NAME resumed).
    from configs import published
    for name in published.SETUPS:
        for stage in published.FIRST_STAGES:
            c = published.get_config(f"{name}+{stage}:/d/*.ar")
            config_lib.validate(c)
            assert c.data.sources.web.path == "/d/*.ar" and c.stop_at_percent
            assert c.data.image_size % c.model.image.patch_size == 0
    first = published.get_config("siglip-so400m14-384+clipa")
    assert (first.data.image_size, first.tokenizer.max_len) == (182, 16)
    assert published.get_config("clip-l14-224+flip").model.image.patch_dropout == 0.5
    with pytest.raises(ValueError, match="no first stage or recipe 'flop'"):
        published.get_config("clip-l14-224+flop")
    # SigLIP 2's losses on every setup, the self-supervised ones from 80% of the run.
    from vlm_jax import objectives
    for name in published.SETUPS:
        c = published.get_config(f"{name}+siglip2")
        config_lib.validate(c)
        objectives.check(c)
        assert c.teacher.start_percent == 80 and c.distill.schedule[-1] == (80, 1.0)
        assert {"caption", "grounding", "distill", "masked_prediction"} <= set(objectives.names(c))
