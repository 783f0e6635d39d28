"""The EMA teacher: the update against a numpy reference, no gradient and no optimizer slot of
its own, its shardings, and an exact resume through a checkpoint."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import make_mesh, tiny_config
from helpers import random_params, random_state

from vlm_jax import objectives as objectives_lib
from vlm_jax.data import pipeline
from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint, step as step_lib

MOMENTUM, START = 0.75, 2


class _ToTeacher:
    """Pulls the student's image embedding towards the teacher's (a distillation stand-in)."""
    name = "to_teacher"

    def __call__(self, out, batch, ctx):
        target = ctx.teacher("encode_image", batch["image"])["img/normed"]
        loss = jnp.mean((out["img/normed"] - target) ** 2)
        return loss, {}


def test_teacher_is_an_ema_of_the_params_without_gradient_and_resumes_exactly(data_dir, tmp_path):
    cfg = tiny_config(data_dir, **{"teacher.momentum": MOMENTUM, "teacher.start_steps": START,
                                   "optim.lr": 1e-2})
    s = Setup(cfg, mesh=make_mesh(2))
    assert s.state_sh.teacher == s.state_sh.params          # sharded like the params
    state = random_state(s)
    np.testing.assert_array_equal(*(jax.tree.leaves(jax.device_get(x))[0]
                                    for x in (state.teacher, state.params)))
    # No optimizer slot for it: the optimizer state is the params' alone.
    sizes = lambda t: sum(x.size for x in jax.tree.leaves(t))
    assert sizes(state.opt_state) == sizes(s.tx.init(s.param_shapes))
    objs = [*s.objectives, objectives_lib.Weighted(_ToTeacher(), 1.0, total_steps=10)]
    fn = step_lib.make(s.model, s.tx, objs, s.schedule, teacher_momentum=MOMENTUM,
                       teacher_start=START)
    host = s.synthetic_batch()
    batch = pipeline.to_global(host, s.batch_sh)
    with s.context():
        run = step_lib.jit(fn, s.state_sh, {k: s.batch_sh for k in host}, s.mesh)
        ref = jax.device_get(state.params)
        for i in range(1, 5):
            state, m = run(state, batch, s.step_rng)
            assert m["to_teacher/loss"] >= 0
            p = jax.device_get(state.params)
            m_i = 0.0 if i <= START else MOMENTUM
            ref = jax.tree.map(lambda t, x: m_i * t + (1 - m_i) * x, ref, p)
            for got, want in zip(jax.tree.leaves(jax.device_get(state.teacher)),
                                 jax.tree.leaves(ref)):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert not all(np.array_equal(a, b) for a, b in
                       zip(jax.tree.leaves(jax.device_get(state.teacher)), jax.tree.leaves(p)))
        # Teacher and student now differ, and still no gradient reaches the teacher.
        loss = lambda t: fn(state.replace(teacher=t), batch, s.step_rng)[1]["loss"]
        zero = jax.jit(jax.grad(loss))(state.teacher)
        assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(zero))
        # Saved and restored, the teacher is bit for bit the same, and so are the next steps.
        ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
        ckpt.save(4, state)
        restored = ckpt.restore(4, s.abstract_state())
        ckpt.close()
        for a, b in zip(jax.tree.leaves(jax.device_get(restored.teacher)),
                        jax.tree.leaves(jax.device_get(state.teacher))):
            np.testing.assert_array_equal(a, b)
        for _ in range(2):
            state, _ = run(state, batch, s.step_rng)
            restored, _ = run(restored, batch, s.step_rng)
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(state))):
        np.testing.assert_array_equal(a, b)


def test_no_teacher_by_default():
    from vlm_jax import config as config_lib
    from vlm_jax.train import state as state_lib
    p = {"w": jnp.ones(3)}
    st = state_lib.from_params(p, optax.sgd(0.1), config_lib.defaults())
    assert st.teacher == {}


def test_a_checkpoint_from_before_the_teacher_field_resumes_without_one(data_dir, tmp_path):
    """A state saved before TrainState had `teacher` restores with an empty one; a config that
    needs a teacher is told to resume with the config the run was trained with."""
    import pytest
    s = Setup(tiny_config(data_dir))
    state = random_state(s)
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(3, {f: getattr(state, f) for f in ("step", "params", "opt_state", "loss_ema")})
    restored = ckpt.restore(3, s.abstract_state())
    assert restored.teacher == {}
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(state))):
        np.testing.assert_array_equal(a, b)
    with_teacher = Setup(tiny_config(data_dir, **{"teacher.momentum": 0.9}))
    with pytest.raises(ValueError, match=r"has no \['teacher'\].*config it was trained with"):
        ckpt.restore(3, with_teacher.abstract_state())
    ckpt.close()


def test_masked_prediction_mask_loss_and_mask_token(data_dir):
    """Exactly round(N * ratio) patches masked per image (ratio 0.25 here), each patch equally
    often (chi-square); the cosine-distance loss against numpy; with nothing masked the student's tower is the plain
    one bit for bit, and masking one patch changes it."""
    from scipy import stats

    from vlm_jax.objectives import masked_prediction as mp
    from vlm_jax.losses.masked import patch_mask
    m = np.asarray(patch_mask(jax.random.key(0), 4000, 16, 0.25)[1])    # as the objective draws
    assert (m.sum(1) == 4).all()
    assert stats.chisquare(m.sum(0)).pvalue > 1e-3
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    mask = rng.random((3, 5)) < 0.5
    loss, _ = mp.cosine_distance_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    want = (1 - (unit(pred) * unit(target)).sum(-1))[mask].mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    cfg = tiny_config(data_dir, **{"masked_prediction.weight": 1.0, "teacher.momentum": 0.99})
    s = Setup(cfg)
    params = random_params(s.param_shapes)
    assert "mask_token" in params["img"] and "patch_head" in params
    from vlm_jax.models.vlm import pixels
    images = pixels(jnp.asarray(s.synthetic_batch()["image"][:2]))
    n = s.param_shapes["img"]["posemb"].shape[0]
    call = lambda method, *a, **k: s.model.apply({"params": params}, *a, method=method, **k)
    plain = call(lambda mdl, x: mdl.img(x)["tokens"], images)
    none = call(lambda mdl, x: mdl.img(x, masked=jnp.zeros((2, n), bool))["tokens"], images)
    np.testing.assert_array_equal(plain, none)
    some = jnp.zeros((2, n), bool).at[:, 0].set(True)
    one = call(lambda mdl, x: mdl.img(x, masked=some)["tokens"], images)
    assert not np.allclose(one, plain)
    raw = jnp.asarray(s.synthetic_batch()["image"][:2])
    assert call("masked_patches", raw, some).shape == (2, n, cfg.model.image.width)


def test_local_crops_cover_their_share_of_the_image():
    """render_local's crops, read back from an image whose pixels encode their own position:
    each covers between the configured shares of the area, placed anywhere."""
    from vlm_jax.data import images
    side = 200
    y, x = np.mgrid[:side, :side]
    coded = np.stack([x * 255 // (side - 1), y * 255 // (side - 1), x * 0], -1).astype(np.uint8)
    rng = np.random.default_rng(0)
    shares, lefts = [], []
    for _ in range(300):
        crop = images.render_local(coded, 32, rng, 0.05, 0.4).astype(float)
        w = (crop[:, -1, 0].mean() - crop[:, 0, 0].mean()) / 255 * 32 / 31
        h = (crop[-1, :, 1].mean() - crop[0, :, 1].mean()) / 255 * 32 / 31
        shares.append(w * h)
        lefts.append(crop[:, 0, 0].mean() / 255)
    shares = np.array(shares)
    assert shares.min() > 0.04 and shares.max() < 0.42
    assert 0.15 < shares.mean() < 0.3                       # uniform in [0.05, 0.4]: 0.225
    assert min(lefts) < 0.1 and max(lefts) > 0.6            # crops land all over the image


def test_distill_loss_is_the_cosine_distance_to_the_teachers_view():
    from vlm_jax import objectives
    from vlm_jax.objectives.distill import Objective
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    student, teacher = unit(rng.normal(size=(2, 6, 4))).astype(np.float32)
    batch = {"image": "global view", "local_image": "local view"}
    views = {"local view": student, "global view": teacher}
    embed = lambda method, x: {"img/normed": jnp.asarray(views[x])}
    loss, m = Objective()({}, batch, objectives.Context(call=embed, teacher=embed))
    np.testing.assert_allclose(loss, np.mean(1 - (student * teacher).sum(-1)), rtol=1e-6)
