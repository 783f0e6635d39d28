"""Meshes with data, fsdp and tensor axes: the same numbers as one device, params where the
rules put them."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import make_mesh, tiny_config
from helpers import loss_and_grads, random_params, random_state
from jax.sharding import PartitionSpec as P

from vlm_jax import config as config_lib, objectives, rules
from vlm_jax.data import pipeline
from vlm_jax.models import layout
from vlm_jax.parallel import mesh as mesh_lib, sharding
from vlm_jax.setup import Setup

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]      # (data, fsdp, tensor)


def _mesh(shape):
    return mesh_lib.make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))


@pytest.mark.slow
def test_meshes_give_the_single_device_loss_and_grads(data_dir):
    cfg = tiny_config(data_dir, **{"mesh.fsdp_min_mib": 0.0, "contrastive.name": "sigmoid"})
    ref = Setup(cfg, mesh=make_mesh(1))
    params = random_params(ref.param_shapes)
    host = ref.synthetic_batch()
    want_loss, want = jax.jit(
        lambda p, b: loss_and_grads(ref, p, b, objectives.build(cfg)))(
        params, host)
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want))
    for shape in MESHES:
        s = Setup(cfg, mesh=_mesh(shape))
        with s.context():
            loss, grads = jax.jit(lambda p, b: loss_and_grads(s, p, b, s.objectives),
                                  out_shardings=(sharding.replicated(s.mesh), s.state_sh.params))(
                jax.device_put(params, s.state_sh.params), pipeline.to_global(host, s.batch_sh))
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=str(shape))
        for path, a, b in zip(rules.tree_paths(grads), jax.tree.leaves(grads),
                              jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"{path} on mesh {shape}")


@pytest.mark.slow
def test_scanned_rematerialised_train_step_on_a_3d_mesh_matches_one_device(data_dir):
    """The jitted, donated step (model, sigmoid loss on the ring, optimizer) on (2, 2, 2), blocks
    scanned and rematerialised (each sub-layer apart), params fsdp- and tensor-sharded, in
    GradCache micro-batches (2 rows per shard each), half of each image's patches dropped,
    against the plain looped model on one device in one pass: the same patches kept on every
    mesh and in micro-batches. (The one-pass step on sharded meshes:
    test_meshes_give_the_single_device_loss_and_grads and test_train.py; scanned against looped
    blocks: test_models.py; the kept patches: test_patch_dropout.py.)"""
    over = {"mesh.fsdp_min_mib": 0.0, "model.text.depth": 2, "contrastive.name": "sigmoid",
            "contrastive.impl": "ring", "model.image.patch_dropout": 0.5}
    cfg = tiny_config(data_dir, **over)
    ref = Setup(cfg, mesh=make_mesh(1))
    state = random_state(ref)
    start = layout.to_scanned(jax.device_get(state.params))      # before the step donates them
    host = next(iter(pipeline.train_dataset(cfg, ref.tokenizer)[0]))   # a real batch
    with ref.context():
        state, m1 = ref.train_step()(state, pipeline.to_global(host, ref.batch_sh), ref.step_rng)
    p1 = jax.device_get(state.params)

    cfg = tiny_config(data_dir, microbatches=2, **over,
                      **{"model.scan": True, "model.remat": "sublayers"})
    s = Setup(cfg, mesh=_mesh((2, 2, 2)))
    state = random_state(s).replace(params=jax.device_put(start, s.state_sh.params))
    with s.context():
        state, m8 = s.train_step()(state, pipeline.to_global(host, s.batch_sh), s.step_rng)
    assert set(m8) == set(m1)
    for key in m1:
        np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Adam magnifies rounding noise in near-zero gradients (up to ~1e-5 here); real steps are
    # ~lr = 1e-3, and a wrong gradient moves a param by that much.
    p8 = layout.to_looped(jax.device_get(state.params))
    for path, a, b in zip(rules.tree_paths(p1), jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)
    # The step keeps every param on its rule's sharding; scanned blocks lead with 'layers'.
    want = sharding.param_specs(s.boxed_params, s.mesh, s.rules, cfg.mesh.param_rules, 0.0)
    is_p = lambda x: isinstance(x, P)
    got = jax.tree.map(lambda x: x.sharding.spec, state.params)
    assert jax.tree.leaves(got, is_leaf=is_p) == jax.tree.leaves(want, is_leaf=is_p)
    assert got["txt"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"] == P(None, "fsdp", "tensor")


def test_param_shardings_follow_the_rules(data_dir):
    cfg = tiny_config(data_dir, **{"mesh.fsdp_min_mib": 0.0, "mesh.param_rules": (
        ("txt/posemb", "replicate"), ("img/.*", "logical"), (".*", "logical|fsdp"))})
    s = Setup(cfg, mesh=_mesh((2, 2, 2)))
    params = s.abstract_params()        # what init_state and a restore place the params on
    spec = {p: x.sharding.spec for p, x in zip(rules.tree_paths(params), jax.tree.leaves(params))}
    # Tensor parallelism from the logical names: heads and the MLP's hidden units.
    assert spec["txt/encoder/block0/attn/q/kernel"] == P("fsdp", "tensor")      # (32, 2, 16)
    assert spec["txt/encoder/block0/attn/out/kernel"] == P("tensor", None, "fsdp")
    assert spec["txt/encoder/block0/mlp/fc1/kernel"] == P("fsdp", "tensor")     # (32, 64)
    assert spec["txt/encoder/block0/mlp/fc2/kernel"] == P("tensor", "fsdp")     # (64, 32)
    # fsdp takes the largest free divisible dimension: the vocab is tensor-sharded already.
    assert spec["txt/embedding/embedding"][1] == "fsdp"
    # Rules before the catch-all: no fsdp on the image tower, nothing at all on txt/posemb.
    assert spec["img/encoder/block0/mlp/fc1/kernel"] == P(None, "tensor")
    assert spec["txt/posemb"] == P()
    # Scalars stay replicated.
    assert spec["scale/t"] == P()
    lines = s.describe_sharding()
    assert any("txt/posemb (24, 32) <- rule #0 'txt/posemb' = 'replicate': P()" in ln
               for ln in lines), lines[:5]


def test_fsdp_shrinks_per_device_bytes_and_respects_the_threshold(data_dir):
    def setup(shape, **over):
        return Setup(tiny_config(data_dir, **{"mesh.fsdp_min_mib": 0.0, **over}),
                     mesh=_mesh(shape))

    def planned(s):        # bytes of the first device's shards, from the shardings alone
        shapes = jax.tree.leaves(jax.tree.map(lambda x: x.shape, nn.unbox(s.boxed_params)),
                             is_leaf=lambda x: isinstance(x, tuple))
        return sum(4 * int(np.prod(sh.shard_shape(shape)))
                   for sh, shape in zip(jax.tree.leaves(s.state_sh.params), shapes))

    full = planned(setup((8, 1, 1)))                     # replicated: every byte on each device
    sharded = setup((1, 8, 1))
    got = sharding.device_bytes(sharded.init_state().params)
    assert got < full / 8 * 1.2                           # ~ 1 / fsdp
    assert planned(sharded) == got
    assert planned(setup((2, 4, 1))) < full / 4 * 1.2
    # A threshold above every param leaves them all replicated.
    assert planned(setup((1, 8, 1), **{"mesh.fsdp_min_mib": 100.0})) == full


def test_param_spec_edge_cases():
    mesh = _mesh((2, 4, 1))
    rules_ = sharding.logical_rules(config_lib.defaults())
    spec = lambda strategy, shape, names=P(): sharding.param_spec(
        strategy, shape, np.float32, names, mesh, rules_)
    assert spec("logical|fsdp", (6, 12)) == P(None, "fsdp")          # 6 is not divisible by 4
    assert spec("logical|fsdp", (8, 8)) == P("fsdp")                 # ties: the first dimension
    assert spec("logical|fsdp", (3, 5)) == P()                      # nothing divisible
    assert spec("fsdp|replicate", (8, 8)) == P()
    assert spec("logical", (8, 6), P("mlp", "embed")) == P("tensor")   # embed: no mesh axis
    assert sharding.param_spec("logical", (8, 6), np.float32, P(None, "mlp"), _mesh((2, 2, 2)),
                               rules_) == P(None, "tensor")


def test_bad_param_rules_and_mesh_sizes_are_config_errors():
    c = config_lib.defaults()
    c.mesh.param_rules = ((".*", "logical|fdsp"),)
    with pytest.raises(config_lib.ConfigError, match="unknown sharding step 'fdsp'"):
        config_lib.validate(c)
    c = config_lib.defaults()
    c.mesh.fsdp = 0
    with pytest.raises(config_lib.ConfigError, match="mesh sizes"):
        config_lib.validate(c)
    c = config_lib.defaults()
    c.mesh.param_rules = (("img/.*", "replicate"),)
    with pytest.raises(ValueError, match="no sharding rule matches param"):
        sharding.param_specs(
            {"txt": {"w": jax.ShapeDtypeStruct((4, 4), np.float32)}}, _mesh((8, 1, 1)), (),
            c.mesh.param_rules)
