"""Multi-objective training: every recipe, the sharded objectives against an unsharded reference,
weights, schedules and balancing."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_mesh, tiny_config
from helpers import random_params, random_state

from vlm_jax import config as config_lib, objectives, rules
from vlm_jax.data import pipeline
from vlm_jax.losses.caption import caption_loss
from vlm_jax.losses.masked import vocab_nll
from vlm_jax.setup import Setup
from vlm_jax.train.trainer import train

RECIPES = ("clip", "siglip", "lit", "albef", "flava", "coca")
EXPECTED = {"clip": {"contrastive"}, "siglip": {"contrastive"}, "lit": {"contrastive"},
            "albef": {"contrastive", "itm", "mlm"}, "flava": {"contrastive", "itm", "mlm", "mim"},
            "coca": {"contrastive", "caption"}}


def _recipe(name, data_dir, **overrides):
    base = importlib.import_module(f"configs.{name}").get_config()
    return tiny_config(data_dir, base, **overrides)


def _fixed_batch(s):
    host = s.synthetic_batch()
    return host, pipeline.to_global(host, s.batch_sh)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_every_loss_down(data_dir, name):
    """A few steps on one fixed batch: each objective's loss finite and lower at the end; a
    frozen tower bit-identical, with no optimizer moments. From random params (no init program
    to compile), but FLAVA from its init, whose program the trainer test below runs anyway."""
    cfg = _recipe(name, data_dir, **{"optim.lr": 3e-3})
    s = Setup(cfg, mesh=make_mesh(2))
    assert {w.objective.name for w in s.objectives} == EXPECTED[name]
    state = s.init_state() if name == "flava" else random_state(s)
    before = jax.device_get(state.params)
    _, batch = _fixed_batch(s)
    history = []
    with s.context():
        step = s.train_step()
        for _ in range(8):
            state, m = step(state, batch, s.step_rng)
            history.append(jax.device_get(m))
    for obj in EXPECTED[name]:
        losses = [float(h[f"{obj}/loss"]) for h in history]
        assert np.all(np.isfinite(losses)), (obj, losses)
        assert np.mean(losses[-2:]) < losses[0], (obj, losses)
    after = jax.device_get(state.params)
    frozen = jax.tree.leaves(rules.tree_map_rules(cfg.optim.freeze_rules, before, "freeze"))
    same = {p: np.array_equal(a, b) for p, a, b in
            zip(rules.tree_paths(before), jax.tree.leaves(before), jax.tree.leaves(after))}
    assert all(same[p] for p, f in zip(same, frozen) if f)            # frozen: bit-identical
    assert not all(same[p] for p, f in zip(same, frozen) if not f)    # the rest trains
    if name == "lit":
        mu = optax.tree_utils.tree_get(state.opt_state, "mu")
        leaves = jax.tree.leaves(mu["img"], is_leaf=lambda x: isinstance(x, optax.MaskedNode))
        assert leaves and all(isinstance(x, optax.MaskedNode) for x in leaves)


def test_flava_runs_through_the_trainer_with_reranking_and_mlm_eval(data_dir, tmp_path):
    # The run of test_recipe_trains_every_loss_down[flava]: the same programs (compiled once).
    cfg = _recipe("flava", data_dir, checkpoint_every_steps=8,
                  **{"optim.lr": 3e-3, "eval.retrieval": ("digits",),
                     "eval.itm_rerank": ("digits",), "eval.mlm": ("digits",), "eval.zeroshot": ()})
    last = train(cfg, str(tmp_path / "run"), mesh=make_mesh(2))
    for key in ("contrastive/loss", "itm/accuracy", "mlm/accuracy", "mim/loss",
                "eval/digits/i2t_r1", "eval/digits/itm_i2t_r1", "eval/digits/itm_t2i_r1",
                "eval/digits/itm_itc_i2t_r1", "eval/digits/mlm_accuracy"):
        assert np.isfinite(last[key]), key
    assert 0 <= last["eval/digits/mlm_accuracy"] <= 1


def _all_objectives(data_dir):
    return tiny_config(data_dir, **{
        "itm.weight": 1.0, "mlm.weight": 0.5, "mim.weight": 0.7, "caption.weight": 2.0,
        "grounding.weight": 0.6, "masked_prediction.weight": 0.8, "teacher.momentum": 0.9,
        "distill.weight": 0.4,
        "model.text.causal": True, "itm.negatives": "global", "itm.text_negatives": 0.5})


def _loss_fn(model, objs, rng, step=3):
    """(params, batch, teacher params) -> ((loss, metrics), gradients)."""
    def loss_fn(p, batch, tp):
        out = model.apply({"params": p}, batch["image"], batch["tokens"], batch["mask"])
        call = lambda method, *a: model.apply({"params": p}, *a, method=method)
        teacher = lambda method, *a: jax.lax.stop_gradient(
            model.apply({"params": tp}, *a, method=method))
        total, metrics, _ = objectives.total_loss(objs, out, batch, call=call, rng=rng, step=step,
                                                  teacher=teacher)
        return total, metrics
    return jax.value_and_grad(loss_fn, has_aux=True)


@pytest.mark.slow
def test_sharded_objectives_match_unsharded_reference(data_dir):
    """Every objective's loss and every gradient on 8 devices against the whole batch on one
    device with no mesh: same negatives, same masks, same numbers (each loss alone is checked on
    1, 2, 4 and 8 devices in test_losses/test_itm/test_masked, the model with the contrastive
    loss on 1 and 8 in test_train); the 8-device model rematerialised."""
    cfg = _all_objectives(data_dir)
    ref = Setup(cfg, mesh=make_mesh(1))
    params = random_params(ref.param_shapes)
    teacher = random_params(ref.param_shapes, seed=1)      # the EMA teacher (masked prediction)
    host, _ = _fixed_batch(ref)
    rng = jax.random.key(7)
    ref_objs = objectives.build(cfg, ref.tokenizer, ref.total_steps)
    (want, want_m), want_g = jax.jit(_loss_fn(ref.model, ref_objs, rng))(params, host, teacher)
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_g))
    # Rematerialised on 8 devices (the same params: blocks looped), ITM's sets of pairs
    # recomputed from their inputs.
    cfg8 = cfg.copy_and_resolve_references()
    cfg8.model.remat = "sublayers"
    s = Setup(cfg8, mesh=make_mesh(8))
    assert s.objectives[1].objective.remat
    with s.context():
        (got, m), g = jax.jit(_loss_fn(s.model, s.objectives, rng))(
            jax.device_put(params, s.state_sh.params), pipeline.to_global(host, s.batch_sh),
            jax.device_put(teacher, s.state_sh.params))
    # ITM's negative texts half its own negative captions (synthetic: some examples have none).
    for key in ("contrastive/loss", "itm/loss", "itm/own_accuracy", "mlm/loss", "mim/loss",
                "caption/loss", "grounding/ref_loss", "grounding/gcap_loss",
                "grounding/ref_box_exact", "masked_prediction/loss", "distill/loss"):
        np.testing.assert_allclose(m[key], want_m[key], rtol=2e-5, err_msg=key)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    for path, x, y in zip(rules.tree_paths(g), jax.tree.leaves(g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5 * scale, err_msg=path)


class _Const:
    """An objective whose loss is a given output scaled: enough to test the weighting."""
    def __init__(self, name, key):
        self.name, self.key = name, key

    def __call__(self, out, batch, ctx):
        return out[self.key], {"accuracy": jnp.float32(0.5)}


def test_weights_follow_the_schedule():
    w = objectives.Weighted(_Const("a", "x"), 2.0, ((0.0, 0.0), (10.0, 1.0), (20.0, 0.5)))
    got = [float(w.at(s)) for s in (0, 5, 10, 15, 20, 100)]
    np.testing.assert_allclose(got, [0.0, 1.0, 2.0, 1.5, 1.0, 1.0])
    assert float(objectives.Weighted(_Const("a", "x"), 0.3).at(7)) == pytest.approx(0.3)
    # Percent of the run -> steps.
    cfg = config_lib.defaults()
    cfg.contrastive.schedule = ((0, 0.0), (50, 1.0))
    (c,) = objectives.build(cfg, total_steps=200)
    assert c.schedule == ((0.0, 0.0), (100.0, 1.0))


def test_total_is_the_weighted_sum_and_balancing_divides_by_running_means():
    objs = [objectives.Weighted(_Const("a", "x"), 1.0), objectives.Weighted(_Const("b", "y"), 3.0)]
    out = {"x": jnp.float32(2.0), "y": jnp.float32(10.0)}
    total, m, running = objectives.total_loss(objs, out, {})
    assert float(total) == pytest.approx(2.0 + 30.0) and running == {}
    assert float(m["a/loss"]) == 2.0 and float(m["b/weight"]) == 3.0 and "b/accuracy" in m
    # Balanced, first step: the bias-corrected running mean is the loss itself -> w_k each.
    zero = {"a": jnp.float32(0), "b": jnp.float32(0)}
    total, _, running = objectives.total_loss(objs, out, {}, running=zero, decay=0.9, step=0)
    assert float(total) == pytest.approx(4.0)
    np.testing.assert_allclose([running["a"], running["b"]], [0.2, 1.0], rtol=1e-6)
    # Later: divided by the running mean (including this step), which gets no gradient.
    g = jax.grad(lambda x: objectives.total_loss(
        objs, {"x": x, "y": jnp.float32(10.0)}, {}, running=running, decay=0.9, step=1)[0])(
            jnp.float32(4.0))
    ema = (0.9 * 0.2 + 0.1 * 4.0) / (1 - 0.9 ** 2)
    assert float(g) == pytest.approx(1 / ema, rel=1e-5)


class _Counted(_Const):
    """_Const that counts the times it is computed (a host callback in the program)."""
    calls = []

    def __call__(self, out, batch, ctx):
        jax.debug.callback(lambda: self.calls.append(self.name))
        return super().__call__(out, batch, ctx)


def test_an_objective_switched_off_is_not_computed():
    """Off while its schedule is 0: no call, no term and no gradient (even from a NaN loss),
    every metric NaN, its running mean kept; on again: the plain weighted sum."""
    objs = [objectives.Weighted(_Const("a", "x"), 1.0),
            objectives.Weighted(_Counted("b", "y"), 3.0, ((4.0, 0.0), (5.0, 1.0)))]
    assert [objectives.off_at(objs, t) for t in (0, 4, 5)] == [{"b"}, {"b"}, frozenset()]
    running = {"a": jnp.float32(1.0), "b": jnp.float32(0.5)}

    def step(objs, x, y, t):
        f = lambda x, y: objectives.total_loss(objs, {"x": x, "y": y}, {}, running=running,
                                               decay=0.9, step=t)
        _, _, new = f(x, y)
        return new, jax.value_and_grad(lambda x, y: f(x, y)[:2], argnums=(0, 1), has_aux=True)(x, y)

    _Counted.calls.clear()
    off = tuple(objectives.switch_off(objs, objectives.off_at(objs, 3)))
    new, ((total, m), (gx, gy)) = jax.jit(step, static_argnums=0)(
        off, jnp.float32(2.0), jnp.float32(jnp.nan), 3)
    jax.effects_barrier()
    assert _Counted.calls == [] and float(new["b"]) == 0.5 and float(new["a"]) != 1.0
    assert np.isfinite(float(total)) and float(gy) == 0.0 and float(gx) > 0
    assert np.isnan(m["b/loss"]) and np.isnan(m["b/accuracy"]) and float(m["b/weight"]) == 0.0
    on = tuple(objectives.switch_off(objs, objectives.off_at(objs, 6)))
    _, ((total, m), _) = jax.jit(step, static_argnums=0)(on, jnp.float32(2.0), jnp.float32(4.0), 6)
    jax.effects_barrier()
    assert set(_Counted.calls) == {"b"} and float(m["b/loss"]) == 4.0
    ema = (0.9 * 0.5 + 0.1 * 4.0) / (1 - 0.9 ** 7)
    assert float(total) == pytest.approx(2.0 / ((0.9 + 0.2) / (1 - 0.9 ** 7)) + 3.0 * 4.0 / ema,
                                         rel=1e-5)


def test_the_trainer_leaves_out_objectives_while_their_schedule_is_zero(data_dir, tmp_path):
    """A run whose contrastive loss joins half-way: a program without it before (its metrics
    NaN, the total 0, its FLOPs), the full one after; with balancing, every loss at every step."""
    import json
    cfg = tiny_config(data_dir, **{"contrastive.schedule": ((0, 0.0), (49, 0.0), (50, 1.0)),
                                   "total_steps": 4, "log_every_steps": 1,
                                   "checkpoint_every_steps": 4, "eval.zeroshot": (),
                                   "eval.retrieval": ()})
    train(cfg, str(tmp_path), mesh=make_mesh(2))
    rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in r]
    assert [np.isnan(r["contrastive/loss"]) for r in rows] == [True, True, False, False]
    assert [r["loss"] for r in rows[:2]] == [0.0, 0.0] and rows[2]["loss"] > 0
    # MFU counts the FLOPs of the program that ran: fewer without the loss (no backward pass).
    flops = [r["tflops_per_sec"] / r["examples_per_sec"] for r in rows]
    assert flops[0] == pytest.approx(flops[1]) and flops[2] == pytest.approx(flops[3])
    assert flops[0] < 0.8 * flops[3]
    cfg.balance.enabled = True
    assert Setup(cfg).off_at(0) == frozenset()


def test_caption_loss_matches_numpy():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(3, 5, 4)).astype(np.float32)
    kernel = rng.normal(size=(4, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, (3, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    logits = states @ kernel
    nll, hits, n = 0.0, 0, 0
    for i in range(3):
        for t in range(4):
            if mask[i, t + 1]:
                z = logits[i, t] - logits[i, t].max()
                nll -= z[tokens[i, t + 1]] - np.log(np.exp(z).sum())
                hits += int(np.argmax(logits[i, t]) == tokens[i, t + 1])
                n += 1
    scores = vocab_nll(jnp.asarray(states[:, :-1]), jnp.asarray(kernel), jnp.zeros(7),
                       jnp.asarray(tokens[:, 1:]), chunk=2)
    loss, m = caption_loss(*scores, jnp.asarray(mask))
    assert float(loss) == pytest.approx(nll / n, rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx(hits / n)


@pytest.mark.parametrize("overrides,match", [
    ({"contrastive.weight": 0.0}, "every objective's weight is 0"),
    ({"itm.schedule": ((50, 1.0), (10, 0.0))}, "'itm.schedule'"),
    ({"mlm.schedule": ((0, 1.0, 2.0),)}, "'mlm.schedule'"),
    ({"mim.weight": -1.0}, "'mim.weight' must be >= 0"),
    ({"itm.negatives": "nearby"}, "'itm.negatives'"),
    ({"balance.decay": 1.0}, "balance.decay"),
])
def test_objective_config_errors(overrides, match):
    c = tiny_config("/unused", **overrides)
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


@pytest.mark.parametrize("overrides,match", [
    ({"caption.weight": 1.0}, "model.text.causal"),
    ({"mlm.weight": 1.0, "mlm.rate": 1.5}, "'mlm.rate' must lie strictly between 0 and 1"),
    ({"mim.weight": 1.0, "mim.ratio": 0.0}, "'mim.ratio' must lie strictly between 0 and 1"),
])
def test_each_objective_checks_its_own_config_before_the_model_is_built(overrides, match):
    """An objective's own rules (objectives/<name>.py: check) stop the setup before any model,
    data or compile."""
    from vlm_jax.setup import Setup
    c = tiny_config("/unused", **overrides)
    config_lib.validate(c)
    with pytest.raises(config_lib.ConfigError, match=match):
        Setup(c, mesh=make_mesh(1))


def test_the_renamed_contrastive_section_is_explained_and_old_workdirs_load():
    c = tiny_config("/unused")
    c.loss = c.contrastive.copy_and_resolve_references()
    with pytest.raises(config_lib.ConfigError, match="section 'loss' is now 'contrastive'"):
        config_lib.validate(c)
    old = config_lib.from_json('{"loss": {"name": "sigmoid", "weight": 1.0}}')
    assert old.contrastive.name == "sigmoid"
