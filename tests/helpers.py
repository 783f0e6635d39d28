"""Helpers shared by tests and the processes they start (no environment set-up here)."""
import os

# The tests' programs are tiny and compile far longer than they run. XLA's HLO passes, which
# decide fusion, memory and FLOP counts, all run; what is cut is code generation: LLVM's
# optimisation passes, and XLA:CPU's MLIR fusion emitters in favour of its elemental ones
# (together about 2.5x less compile time for a train step); and the split of each program's
# code into parallel compile jobs, whose splitting costs a sixth of the compile and whose
# parallelism the suite's processes, one per core, leave no core for.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")


def device_flags(n: int) -> str:
    return f"--xla_force_host_platform_device_count={n} {FAST_COMPILE}"


def process_env(devices: int, **extra) -> dict:
    """The environment of a process a test starts: `devices` fake CPU devices, the suite's
    compile flags and compilation cache (inherited)."""
    return {**os.environ, "XLA_FLAGS": device_flags(devices), **extra}


def make_mesh(n: int):
    """A data x fsdp x tensor = n x 1 x 1 mesh over the first n devices (Auto axes)."""
    import jax

    from vlm_jax.parallel import mesh as mesh_lib
    return mesh_lib.make_mesh({"data": n, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:n])


def loss_and_grads(setup, params, batch, objs):
    """The weighted objectives' loss on `batch` and its gradient, through `setup`'s model."""
    import jax

    from vlm_jax import objectives

    from vlm_jax.train.forward import forward

    def loss_fn(p):     # with `visible` in the batch, the image tower sees only those patches
        return objectives.total_loss(objs, forward(setup.model, p, batch), batch)[0]
    return jax.value_and_grad(loss_fn)(params)


def random_params(shapes, seed: int = 0, std: float = 0.1):
    """Host arrays with the structure, shapes and dtypes of `shapes` (ShapeDtypeStructs, boxed
    or not), drawn at random: norm scales around 1, the rest around 0. For tests that compare
    two computations on the same params: no init program to compile (seconds of XLA time per
    model), and no zero biases to hide a wrong gradient."""
    import jax
    import numpy as np
    rng = np.random.default_rng(seed)

    def draw(path, x):
        value = rng.normal(0.0, std, x.shape)
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if names[-1] == "scale":
            value += 1.0
        return value.astype(x.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_state(setup, seed: int = 0):
    """A TrainState for `setup` at step 0 around `random_params`, on the state's shardings. For
    tests of the step that need no particular starting point: the model's init program (seconds
    of XLA time per model) is not compiled."""
    import jax

    from vlm_jax.train import state as state_lib
    with setup.context():
        return jax.jit(lambda p: state_lib.from_params(p, setup.tx, setup.config),
                       out_shardings=setup.state_sh)(random_params(setup.param_shapes, seed))


def jitted_method(model, method):
    """`(params, *args) -> model.apply(..., method=method)` as one jitted program (an independent
    reference computation compiles once rather than op by op)."""
    import jax
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args, method=method))


# The suite's one tiny model and run: a train step in well under a second on one CPU core.
# TensorBoard is off (tensorboardX imports PyTorch where it is installed, seconds per process)
# except in the test of its events.
TINY = {"batch_size": 16, "data.image_size": 16, "data.num_threads": 1, "tokenizer.max_len": 24,
        "model.embed_dim": 16, "model.image.patch_size": 8, "model.mim_decoder.width": 32,
        **{f"model.{part}.{k}": v
           for part in ("image", "text", "fusion", "caption_decoder", "mim_decoder")
           for k, v in (("depth", 1), ("heads", 2), ("mlp_dim", 64))},
        **{f"model.{tower}.width": 32 for tower in ("image", "text")},
        "total_steps": 8, "log_every_steps": 2, "checkpoint_every_steps": 4,
        "optim.warmup_steps": 0, "async_checkpointing": False, "eval.batch_size": 64,
        "log.tensorboard": False}


def tiny_config(data_dir: str, base=None, **overrides):
    """`base` (a recipe's config; the defaults when None) with the TINY sizes and run, its
    objectives kept, then `overrides` (dotted keys)."""
    from vlm_jax import config as config_lib
    c = config_lib.defaults() if base is None else base
    for key, value in {"data_dir": data_dir, **TINY, **overrides}.items():
        config_lib.assign(c, key, value)
    return c


def tiny_flags(data_dir: str, **overrides) -> list[str]:
    """The same as `--config.KEY=VALUE` flags, for the entry points the tests start."""
    values = {"data_dir": data_dir, **TINY, **overrides}
    return [f"--config.{k}={v}" for k, v in values.items()]


def free_port() -> int:
    """A localhost TCP port nobody is listening on (for a jax.distributed coordinator)."""
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def write_suite(path, datasets: dict, **evaluators) -> str:
    """A suite file, as in configs/evals/: name -> eval_dataset(**keys), and evaluator lists."""
    lines = ["import ml_collections", "from vlm_jax.config import eval_dataset", "",
             "def get_config():", "    s = ml_collections.ConfigDict()",
             "    s.datasets = ml_collections.ConfigDict()"]
    lines += [f"    s.datasets.{name} = eval_dataset(**{keys!r})" for name, keys in datasets.items()]
    lines += [f"    s.{name} = {tuple(sets)!r}" for name, sets in evaluators.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines + ["    return s", ""]))
    return str(path)


def one_step(cfg, mesh, batch=None):
    """(params, metrics, host batch, temporary bytes) after one compiled step from random
    params (the same for every config of the same model)."""
    import jax

    from vlm_jax.data import pipeline
    from vlm_jax.setup import Setup
    s = Setup(cfg, mesh=make_mesh(mesh) if isinstance(mesh, int) else mesh)
    state = random_state(s)
    host = s.synthetic_batch() if batch is None else batch
    with s.context():
        batch = pipeline.to_global(host, s.batch_sh)
        step = s.train_step().lower(state, batch, s.step_rng).compile()
        state, m = step(state, batch, s.step_rng)
    return (jax.device_get(state.params), jax.device_get(m), host,
            step.memory_analysis().temp_size_in_bytes)


def assert_same_update(full, micro):
    """Two one_step results: the same metrics and updated params."""
    import jax
    import numpy as np

    from vlm_jax import rules
    (p1, m1, *_), (pk, mk, *_) = full, micro
    assert set(m1) == set(mk)
    for key in m1:
        np.testing.assert_allclose(mk[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Adam magnifies rounding noise in near-zero gradients (up to ~1e-5 here); real steps are
    # ~lr = 1e-3, and a wrong gradient moves a param by that much.
    for path, a, b in zip(rules.tree_paths(p1), jax.tree.leaves(pk), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)
