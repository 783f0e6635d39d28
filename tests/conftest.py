"""8 fake CPU devices for every test, set before JAX initialises its backend."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU compiles threefry key derivation slowly (seconds per model init on 2 cores); the rbg
# generator compiles ~2x faster. Nothing here depends on which generator produces the bits.
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, jax.devices()


def make_mesh(n: int):
    """A data x fsdp x tensor = n x 1 x 1 mesh over the first n devices (Auto axes)."""
    from vlm_jax.parallel import mesh as mesh_lib
    return mesh_lib.make_mesh({"data": n, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:n])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Built-in datasets prepared once per test session."""
    from vlm_jax.data import builtin
    d = str(tmp_path_factory.mktemp("data"))
    for name in builtin.DATASETS:
        builtin.ensure(name, d)
    return d


def tiny_config(data_dir: str, **overrides):
    """A model small enough for a train step in well under a second on one CPU core."""
    from vlm_jax import config as config_lib
    c = config_lib.defaults()
    c.data_dir = data_dir
    c.batch_size = 16
    c.data.image_size = 16
    c.data.num_threads = 1
    c.tokenizer.max_len = 24
    c.model.embed_dim = 16
    for tower in (c.model.image, c.model.text):
        tower.width, tower.depth, tower.heads, tower.mlp_dim = 32, 1, 2, 64
    c.model.image.patch_size = 8
    c.total_steps = 8
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.optim.warmup_steps = 0
    c.async_checkpointing = False
    c.eval.batch_size = 64
    for key, value in overrides.items():
        section = c
        *parents, leaf = key.split(".")
        for p in parents:
            section = section[p]
        section[leaf] = value
    return c
