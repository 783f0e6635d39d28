"""8 fake CPU devices for every test, set before JAX initialises its backend."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, jax.devices()


def make_mesh(n: int):
    """A 1-D `data` mesh over the first n devices (Auto axes, as linen needs)."""
    from vlm_jax.parallel import mesh as mesh_lib
    return mesh_lib.make_mesh({"data": n}, devices=jax.devices()[:n])
