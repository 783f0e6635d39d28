"""8 fake CPU devices for every test, set before JAX initialises its backend."""
import os

from helpers import device_flags

# The suite's compile flags (helpers.FAST_COMPILE says which and why).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + device_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for every process of a test session (the xdist workers and the
# runs they start): tests rebuild the same tiny programs many times over. It lives in the
# checkout (a fresh clone starts cold) and holds every program, however quick to compile.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import make_mesh, tiny_config  # noqa: E402,F401  (tests import them from here)

from launch.runtime import collect_garbage_less  # noqa: E402

# The entry points' pace for the collector: 5% of a test process's CPU went to full collections.
collect_garbage_less()


# The longest files first. pytest-xdist (`--dist loadfile --no-loadscope-reorder`, as `make test`
# runs it) hands whole files to whichever worker is free in this order, so the workers finish
# together instead of one waiting on a long file it picked up last.
LONGEST_FIRST = ("test_objectives.py", "test_train.py", "test_resume.py", "test_accumulate.py",
                 "test_models.py", "test_benchmarks.py", "test_sharding.py", "test_interop.py",
                 "test_compile.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))      # stable otherwise


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, jax.devices()
    # JAX reads these variables when it is first imported: nothing may import it before this file.
    assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Built-in datasets prepared once per test session, in a folder the xdist workers share: each
    dataset by the first worker to need it (seconds of drawing and PNG encoding) while the others
    wait for it; the workers start on different datasets, so they prepare them side by side."""
    import fcntl

    from vlm_jax.data import builtin
    root = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker:
        root = root.parent                  # the session's folder above each worker's
    names = list(builtin.DATASETS)
    k = int(worker[2:]) % len(names) if worker[2:].isdigit() else 0     # gw0, gw1, ...
    for name in names[k:] + names[:k]:
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            builtin.ensure(name, str(root / "data"))
    return str(root / "data")
