"""Model FLOPs of a train step and the devices' peak, for MFU.

FLOPs come from XLA's cost analysis of the step lowered for the whole mesh, before
partitioning (so they are global), and always of the plain step: without scan, remat or
micro-batches. XLA counts a loop body once whatever its trip count, and recomputation is not
model work, so those variants would under- and over-report. Where the backend has no analysis
before compiling (the GPU and TPU plugins), the step is lowered for one CPU device to count.
"""
from __future__ import annotations

import jax

from vlm_jax.setup import Setup

# Dense bfloat16 peak TFLOP/s per chip from the vendors' data sheets, by a substring of
# `device_kind` (longest match first). MFU is quoted against it whatever the model's dtype.
PEAK_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0,
    "A100": 312.0, "A800": 312.0, "L4": 121.0, "L40S": 362.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0, "TPU7x": 2307.0,
}


def peak_per_device(override_tflops: float = 0.0, device=None) -> float | None:
    """Peak FLOP/s of one device: `override_tflops` when set, else the data-sheet figure for
    the device kind; None when unknown (CPUs), and MFU is then not reported."""
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = (device or jax.devices()[0]).device_kind
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name in kind:
            return PEAK_TFLOPS[name] * 1e12
    return None


def plain(config):
    """A copy of `config` whose step has no scan, remat or micro-batches."""
    c = config.copy_and_resolve_references()
    c.model.scan, c.model.remat, c.microbatches = False, "none", 1
    return c


def is_plain(config) -> bool:
    return not config.model.scan and config.model.remat == "none" and config.microbatches == 1


def step_flops(setup, batch, step_fn=None, off: frozenset[str] = frozenset()) -> float:
    """Global FLOPs of one plain train step of `setup` (a vlm_jax.setup.Setup) on batches shaped
    like `batch`, the objectives in `off` left out: its jitted `step_fn` (default: a new one)
    when plain, else the step of a plain variant of the same config."""
    if not is_plain(setup.config):
        step_fn = None
        setup = Setup(plain(setup.config), setup.mesh, num_train=setup.num_train,
                      tokenizer=setup.tokenizer)
    step_fn = step_fn or setup.train_step(off)
    # With the batch's own sharding the signature is the train loop's: the step's trace and
    # lowering are reused, not redone.
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None)), batch)
    with setup.context():
        cost = step_fn.lower(setup.abstract_state(), shapes, setup.step_rng).cost_analysis()
    if cost is None:
        # The GPU and TPU plugins (PJRT C API) analyse only compiled programs, whose dots are
        # library calls the analysis does not count: the same global step lowered for one CPU
        # device instead (before partitioning the count does not depend on the mesh).
        cost = _cpu_cost(setup, shapes, off)
    return float(cost["flops"])


def _cpu_cost(setup, shapes, off) -> dict:
    from vlm_jax.parallel import mesh as mesh_lib
    device = jax.devices("cpu")[0]
    unplaced = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    with jax.default_device(device):          # the constants the step closes over, too
        cpu = Setup(setup.config, mesh_lib.make_mesh({}, devices=[device]),
                    num_train=setup.num_train, tokenizer=setup.tokenizer)
        with cpu.context():
            return cpu.train_step(off).lower(
                jax.tree.map(unplaced, cpu.abstract_state()), jax.tree.map(unplaced, shapes),
                unplaced(cpu.step_rng)).cost_analysis()
