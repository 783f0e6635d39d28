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
from helpers import make_mesh, tiny_config  # noqa: E402,F401  (tests import them from here)


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, jax.devices()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Built-in datasets prepared once per test session."""
    from vlm_jax.data import builtin
    d = str(tmp_path_factory.mktemp("data"))
    for name in builtin.DATASETS:
        builtin.ensure(name, d)
    return d
