"""Micro-batched gradients: GradCache for contrastive losses, plain accumulation otherwise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mesh, tiny_config
from helpers import assert_same_update, one_step

from vlm_jax import config as config_lib
from vlm_jax.setup import Setup
from vlm_jax.train import accumulate


@pytest.mark.slow
def test_gradcache_gives_the_full_batch_update_in_less_memory(data_dir):
    """4 micro-batches against the one-pass step on 2 shards (2 rows per shard and micro-batch),
    softmax over each shard's own rows (local negatives): the same update, and less than 0.6x
    the temporary memory (0.49x for this tiny model, whose params and optimizer state weigh
    most). Global negatives: the next test (gathered) and test_sharding.py's 3-D mesh step
    (the sigmoid ring, scanned and rematerialised blocks)."""
    over = {"contrastive.name": "softmax", "contrastive.negatives": "local",
            "contrastive.impl": "gather"}
    full = one_step(tiny_config(data_dir, **over), 2)
    micro = one_step(tiny_config(data_dir, microbatches=4, **over), 2, batch=full[2])
    assert_same_update(full, micro)
    assert micro[3] < 0.6 * full[3], (micro[3], full[3])


@pytest.mark.slow
def test_per_example_objectives_accumulate_alongside_gradcache(data_dir):
    """The CoCa recipe of test_objectives.py (the same one-pass step): contrastive (softmax over
    the gathered global batch) + captioning. With every caption of full length each micro-batch
    counts the same tokens, so the mean of the micro-batch losses is the full-batch loss."""
    from configs import coca
    base = lambda **kw: tiny_config(data_dir, base=coca.get_config(), **{"optim.lr": 3e-3, **kw})
    s = Setup(base(), mesh=make_mesh(2))
    host = s.synthetic_batch()
    host["mask"] = np.ones_like(host["mask"])
    full = one_step(base(), 2, batch=host)
    micro = one_step(base(microbatches=2), 2, batch=host)
    assert "caption/loss" in full[1]
    assert_same_update(full, micro)


def test_split_keeps_each_micro_batch_on_its_shards():
    rows = jnp.arange(16)                        # 2 shards of 8 rows, 4 micro-batches
    micro = accumulate.split(rows, k=4, n_shards=2)
    np.testing.assert_array_equal(micro[0], [0, 1, 8, 9])
    np.testing.assert_array_equal(micro[3], [6, 7, 14, 15])
    np.testing.assert_array_equal(accumulate.merge(micro, k=4, n_shards=2), rows)


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
        one_step(tiny_config(data_dir, microbatches=4), 8)
