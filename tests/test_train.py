"""The train step, the optimizer rules and checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_mesh, tiny_config
from helpers import loss_and_grads, random_params, random_state

from vlm_jax import objectives, rules
from vlm_jax.data import pipeline
from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint, optim


@pytest.mark.slow
@pytest.mark.parametrize("kind,impl,devices", [
    ("softmax", "ring", (1, 8)), ("sigmoid", "ring", (8,)), ("softmax", "gather", (8,))])
def test_sharded_model_grads_match_single_device_reference(data_dir, kind, impl, devices):
    """Loss and every model-param gradient on 1 and 8 devices; tests/test_losses.py covers each
    loss alone on 1, 2, 4 and 8, and tests/test_sharding.py the sigmoid gather on 8 devices (and
    on fsdp and tensor meshes) and the whole step, optimizer included, on a 3-D mesh."""
    cfg = tiny_config(data_dir, **{"contrastive.name": kind, "contrastive.negatives": "global",
                                   "contrastive.impl": impl})
    ref_setup = Setup(cfg, mesh=make_mesh(1))
    params = random_params(ref_setup.param_shapes)
    host_batch = ref_setup.synthetic_batch()
    # The reference: the whole batch on one device, no mesh, no shard_map (one jitted program).
    want_loss, want_g = jax.jit(
        lambda p, b: loss_and_grads(ref_setup, p, b, objectives.build(cfg)))(
        params, host_batch)
    for n in devices:
        s = Setup(cfg, mesh=make_mesh(n))
        batch = pipeline.to_global(host_batch, s.batch_sh)
        with s.context():
            loss, g = jax.jit(lambda p, b: loss_and_grads(s, p, b, s.objectives))(
                jax.device_put(params, s.state_sh.params), batch)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=f"{n} devices")
        # float32 tolerance: relative 1e-5 of the gradients' scale. Some true gradients are 0
        # (attention ignores a key bias), where both sides hold only rounding noise.
        scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_g))
        for path, a, b in zip(rules.tree_paths(g), jax.tree.leaves(g), jax.tree.leaves(want_g)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"{path} on {n} devices")


def test_freeze_wd_and_lr_rules(data_dir):
    cfg = tiny_config(data_dir, **{
        "optim.freeze_rules": (("img/.*", True), (".*", False)),
        "optim.lr_rules": (("txt_proj/.*", 0.0), (".*", 1.0)),
        "optim.weight_decay": 0.5})
    s = Setup(cfg, mesh=make_mesh(2))
    state = random_state(s)
    before = jax.device_get(state.params)
    b = s.synthetic_batch()
    with s.context():
        state, _ = s.train_step()(state, pipeline.to_global(b, s.batch_sh), s.step_rng)
    after = jax.device_get(state.params)
    changed = {p: not np.array_equal(x, y) for p, x, y in
               zip(rules.tree_paths(before), jax.tree.leaves(before), jax.tree.leaves(after))}
    assert not any(v for p, v in changed.items() if p.startswith("img/"))        # frozen (LiT)
    assert not any(v for p, v in changed.items() if p.startswith("txt_proj/"))   # lr x 0
    assert changed["txt/encoder/block0/mlp/fc1/kernel"] and changed["img_proj/dense/kernel"]
    # Frozen params carry no Adam moments.
    mu = optax.tree_utils.tree_get(state.opt_state, "mu")
    assert isinstance(mu["img"]["embedding"]["kernel"], optax.MaskedNode)


def test_weight_decay_only_where_the_rules_say():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "t": jnp.ones(())}
    cfg = tiny_config("/unused", **{"optim.weight_decay": 0.1})
    tx, _ = optim.build(cfg, params, total_steps=10, warmup_steps=0)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0
    assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0 and float(updates["t"]) == 0


def test_rules_must_cover_every_param():
    params = {"img": {"w": jnp.ones(2)}, "txt": {"w": jnp.ones(2)}}
    with pytest.raises(ValueError, match="no freeze rule matches param 'txt/w'"):
        rules.tree_map_rules((("img/.*", True),), params, "freeze")
    with pytest.raises(ValueError, match="bad regex"):
        rules.tree_map_rules((("img/(", True),), params, "freeze")


def test_checkpoint_round_trip_with_data_iterator(data_dir, tmp_path):
    cfg = tiny_config(data_dir)
    s = Setup(cfg, mesh=make_mesh(1))        # saved from one device, restored onto eight
    state = random_state(s)
    it = iter(pipeline.train_dataset(cfg, s.tokenizer)[0])
    for _ in range(3):
        next(it)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, async_save=True)
    ckpt.save(3, state, it)
    ckpt.wait()
    want = next(it)
    ckpt.close()

    s2 = Setup(cfg, mesh=make_mesh(8))       # restore onto a different mesh
    ckpt2 = checkpoint.Checkpointer(str(tmp_path))
    assert ckpt2.latest_step() == 3
    fresh = iter(pipeline.train_dataset(cfg, s2.tokenizer)[0])
    restored = ckpt2.restore(3, s2.abstract_state(), fresh)
    ckpt2.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    leaf = restored.params["img"]["embedding"]["kernel"]
    assert leaf.sharding.mesh.devices.size == 8
    got = next(fresh)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(FileNotFoundError, match="no complete checkpoint for step 7"):
        checkpoint.Checkpointer(str(tmp_path)).restore(7, s2.abstract_state())


def test_non_finite_step_stops_the_run_without_saving(data_dir, tmp_path):
    from vlm_jax.train import trainer
    # A learning rate of 1e39 makes the first update's params infinite (the run of the second
    # part of the next test: the same program). A loss that overflows is caught the same way
    # (test_skip_mode_leaves_the_state_untouched).
    cfg = tiny_config(data_dir, **{"total_steps": 12, "optim.lr": 1e39,
                                   "checkpoint_every_steps": 1, "log_every_steps": 4})
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss or gradients at step 1; "
                       "stopped without saving. No checkpoint had been saved yet"):
        trainer.train(cfg, str(tmp_path))
    assert checkpoint.Checkpointer(str(tmp_path)).latest_step() is None


@pytest.mark.slow
def test_nan_mid_run_keeps_the_last_good_checkpoint_and_keep_every(data_dir, tmp_path):
    from vlm_jax.train import trainer
    cfg = tiny_config(data_dir, **{"checkpoint_every_steps": 2, "log_every_steps": 4,
                                   "keep_checkpoints": 2, "keep_every_steps": 4,
                                   "eval.zeroshot": (), "eval.retrieval": ()})
    trainer.train(cfg, str(tmp_path))                  # saves 2, 4, 6 and 8
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    assert ckpt.manager.all_steps() == [4, 6, 8]      # the last two, and every 4th kept for good
    good = ckpt.restore(8, Setup(cfg).abstract_state())
    ckpt.close()
    # Resumed with a learning rate that overflows: step 9's update makes the params infinite.
    cfg.total_steps, cfg.optim.lr = 12, 1e39
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 9; stopped without saving. "
                       r"The last good checkpoint is step 8 in .*checkpoints"):
        trainer.train(cfg, str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    assert ckpt.manager.all_steps() == [4, 6, 8]
    again = ckpt.restore(8, Setup(cfg).abstract_state())
    ckpt.close()
    for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)


def test_skip_mode_leaves_the_state_untouched(data_dir, tmp_path):
    import json

    from vlm_jax.train import trainer
    cfg = tiny_config(data_dir, **{"contrastive.name": "sigmoid", "contrastive.sigmoid_t_init": 1e38,
                                   "nonfinite": "skip", "total_steps": 4, "log_every_steps": 2,
                                   "checkpoint_every_steps": 4,
                                   "eval.zeroshot": (), "eval.retrieval": ()})
    trainer.train(cfg, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["skipped_updates"] for r in rows if "loss" in r] == [2, 2]
    s = Setup(cfg)
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    saved = ckpt.restore(4, s.abstract_state())
    ckpt.close()
    init = s.init_state()
    assert int(saved.step) == 4
    for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(saved.params)):
        np.testing.assert_array_equal(a, b)


def test_frozen_tower_has_no_backward_pass(data_dir):
    """stop_gradient at frozen params: the step has no backward pass for the frozen tower (fewer
    FLOPs in its HLO, as lowered; compiling would only confirm it)."""
    flops = {}
    for frozen in (False, True):
        cfg = tiny_config(data_dir, **{"optim.freeze_rules": (("img/.*", frozen), (".*", False))})
        s = Setup(cfg, mesh=make_mesh(1))
        state = s.abstract_state()
        b = s.synthetic_batch()
        with s.context():
            lowered = s.train_step().lower(state, pipeline.to_global(b, s.batch_sh), s.step_rng)
        flops[frozen] = lowered.cost_analysis()["flops"]
    assert flops[True] < 0.95 * flops[False], flops      # the tiny image tower: ~11% here


def test_adam_first_moment_in_bfloat16_when_asked():
    cfg = tiny_config("/unused", **{"optim.mu_dtype": "bfloat16"})
    params = {"w": jnp.ones((4, 4)), "b": jnp.zeros((4,))}
    tx, _ = optim.build(cfg, params, total_steps=10, warmup_steps=0)
    adam = [s for s in jax.tree.leaves(tx.init(params), is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert {x.dtype for x in jax.tree.leaves(adam[0].mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam[0].nu)} == {jnp.dtype(jnp.float32)}


def _tensorboard_scalars(workdir) -> dict:
    """{tag: [(step, value), ...]} read back with TensorBoard's own reader (purges applied)."""
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_logged_scalars_and_survive_a_resume(data_dir, tmp_path):
    import json
    import shutil

    from vlm_jax.train import trainer
    # The suite's tiny run (8 steps, a checkpoint every 4), logging every step.
    cfg = tiny_config(data_dir, **{"log_every_steps": 1, "eval.retrieval": (),
                                   "log.tensorboard": True})
    trainer.train(cfg, str(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints" / "8")          # as if stopped after step 4
    trainer.train(cfg, str(tmp_path))                      # resumes at 4, logs 5-8 again
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    tb = _tensorboard_scalars(tmp_path)
    for key in ("loss", "contrastive/loss", "contrastive/i2t_acc", "lr", "grad_norm",
                "examples_per_sec", "data_wait_fraction", "host_gib"):
        want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]
        assert [step for step, _ in tb[key]] == list(range(1, 9)), key   # each once, in order
        assert tb[key] == want, key
    assert tb["eval/digits/zeroshot_top1"] == [
        (8, pytest.approx(rows[-1]["eval/digits/zeroshot_top1"]))]


def test_setups_share_programs_unless_a_program_reads_what_differs(data_dir):
    """Data sources, evaluators, logging, checkpoint cadence and seed are not in any program:
    Setups differing only there share the jitted step and state shapes; the learning rate, the
    run length (the schedule) and the mesh each make a program of their own."""
    from vlm_jax.setup import program_config
    base = Setup(tiny_config(data_dir), mesh=make_mesh(2))
    same = Setup(tiny_config("/elsewhere", **{"eval.zeroshot": (), "log_every_steps": 1,
                                              "seed": 3, "checkpoint_every_steps": 2}),
                 mesh=make_mesh(2))
    assert program_config(same.config) == program_config(base.config)
    assert same.train_step() is base.train_step()
    assert same.abstract_state() is base.abstract_state()
    for other in (Setup(tiny_config(data_dir, **{"optim.lr": 0.5}), mesh=make_mesh(2)),
                  Setup(tiny_config(data_dir, total_steps=12), mesh=make_mesh(2)),
                  Setup(tiny_config(data_dir), mesh=make_mesh(4))):
        assert other.train_step() is not base.train_step()
