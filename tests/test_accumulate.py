"""Micro-batched gradients: GradCache for contrastive losses, plain accumulation otherwise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mesh, tiny_config

from vlm_jax import config as config_lib, rules
from vlm_jax.data import pipeline
from vlm_jax.parallel import mesh as mesh_lib
from vlm_jax.setup import Setup
from vlm_jax.train import accumulate


def _one_step(cfg, mesh, batch=None):
    s = Setup(cfg, mesh=make_mesh(mesh) if isinstance(mesh, int) else mesh)
    state = s.init_state()
    host = s.synthetic_batch() if batch is None else batch
    with s.context():
        state, m = s.train_step()(state, pipeline.to_global(host, s.batch_sh), s.step_rng)
    return jax.device_get(state.params), jax.device_get(m), host


def _assert_same_update(full, micro):
    (p1, m1, _), (pk, mk, _) = full, micro
    assert set(m1) == set(mk)
    for key in m1:
        np.testing.assert_allclose(mk[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Adam magnifies rounding noise in near-zero gradients (up to ~1e-5 here); real steps are
    # ~lr = 1e-3, and a wrong gradient moves a param by that much.
    for path, a, b in zip(rules.tree_paths(p1), jax.tree.leaves(pk), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)


@pytest.mark.slow
@pytest.mark.parametrize("kind,negatives,impl,mesh,k", [
    ("softmax", "global", "gather", (2, 1, 1), 4), ("sigmoid", "global", "ring", (2, 2, 2), 2),
    ("sigmoid", "local", "gather", (2, 1, 1), 4)])
def test_gradcache_gives_the_full_batch_update(data_dir, kind, negatives, impl, mesh, k):
    """k micro-batches against the one-pass step on the same (data, fsdp, tensor) mesh: 2 rows
    per shard and micro-batch (the ring case also with fsdp-sharded params, scanned blocks and
    remat). The softmax loss on local negatives: the next test."""
    over = {"contrastive.name": kind, "contrastive.negatives": negatives, "contrastive.impl": impl,
            "mesh.fsdp_min_mib": 0.0}
    if mesh == (2, 2, 2):
        over.update({"model.scan": True, "model.remat": "nothing_saveable"})
    mesh = mesh_lib.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh)),
                              devices=jax.devices()[:int(np.prod(mesh))])
    full = _one_step(tiny_config(data_dir, **over), mesh)
    micro = _one_step(tiny_config(data_dir, microbatches=k, **over), mesh, batch=full[2])
    _assert_same_update(full, micro)


@pytest.mark.slow
def test_per_example_objectives_accumulate_alongside_gradcache(data_dir):
    """Contrastive (softmax, local negatives on 2 shards) + captioning: with every caption of
    full length each micro-batch counts the same tokens, so the mean of the micro-batch losses
    is the full-batch loss."""
    from configs import coca
    base = lambda **kw: tiny_config(data_dir, base=coca.get_config(),
                                    **{"contrastive.negatives": "local", **kw})
    s = Setup(base(), mesh=make_mesh(2))
    host = s.synthetic_batch()
    host["mask"] = np.ones_like(host["mask"])
    full = _one_step(base(), 2, batch=host)
    micro = _one_step(base(microbatches=2), 2, batch=host)
    assert "caption/loss" in full[1]
    _assert_same_update(full, micro)


def test_split_keeps_each_micro_batch_on_its_shards():
    rows = jnp.arange(16)                        # 2 shards of 8 rows, 4 micro-batches
    micro = accumulate.split(rows, k=4, n_shards=2)
    np.testing.assert_array_equal(micro[0], [0, 1, 8, 9])
    np.testing.assert_array_equal(micro[3], [6, 7, 14, 15])
    np.testing.assert_array_equal(accumulate.merge(micro, k=4, n_shards=2), rows)


@pytest.mark.slow
def test_microbatches_lower_the_peak_memory_of_the_step(data_dir):
    def temp_bytes(k):
        cfg = tiny_config(data_dir, **{"microbatches": k, "batch_size": 64,
                                       "data.image_size": 32, "model.image.patch_size": 4,
                                       "model.image.mlp_dim": 256})
        s = Setup(cfg, mesh=make_mesh(1))
        batch = jax.eval_shape(lambda: pipeline.to_global(s.synthetic_batch(), s.batch_sh))
        with s.context():
            compiled = s.train_step().lower(s.abstract_state(), batch, s.step_rng).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(4) < 0.5 * temp_bytes(1)


def test_microbatch_config_errors(data_dir):
    def check(match, **over):
        cfg = tiny_config(data_dir, **over)
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.validate(cfg)
    check("positive divisor of batch_size 16", microbatches=3)
    # Declared by the objective (reads=None), refused when the step is built.
    with pytest.raises(config_lib.ConfigError, match="does not support the 'itm' objective"):
        Setup(tiny_config(data_dir, microbatches=2, **{"itm.weight": 1.0})).train_step()
    check("does not support balance", microbatches=2, **{"balance.enabled": True})
    # A per-shard batch that does not split: 16 rows on 8 devices, 4 micro-batches.
    with pytest.raises(ValueError, match="does not split into microbatches=4 on each of 8"):
        _one_step(tiny_config(data_dir, microbatches=4), 8)
