"""Compile a run's train step for a TPU slice on this machine (no TPU needed), and report what
each chip would hold.

  python -m launch.compile --config configs/siglip.py --topology v5e-256 [--num_slices 2]
      [--find_batch [--find_batch_resolution N]] [--json] [--config.KEY=VALUE ...]

The run is built as `launch.train` builds it, minus the data: the same config, setup and jitted
programs (the train step; the evaluators' image and text towers), lowered on abstract state and
batch shapes over the slice's compile-only devices (libtpu, the `tpu` extra) and compiled by the
TPU compiler. The report, per chip: params, optimizer state and batch; the train step's
arguments, outputs, temporaries and total against the chip's HBM (FITS / DOES NOT FIT and the
margin); its collectives; the largest arrays left whole on every chip; the model FLOPs per step;
and each evaluation program's total. It measures memory and communication, not speed.

Topologies: v5e:16x16, v5p:8x8x8, v6e:4x4 (chips per axis) or v5e-256, v6e-16 (chips),
v5p-1024, v4-32 (TensorCores). Exit codes: 0 fits (or no HBM figure), 3 does not fit, 1 error.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

# JAX runs on this machine's CPU; the slice's devices are compile-only (libtpu would otherwise
# look for a TPU to run on). Set before anything imports JAX.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from launch import flags as launch_flags  # noqa: E402
from launch import runtime  # noqa: E402
from vlm_jax import config as config_lib  # noqa: E402

TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e-256 or v5p:8x8x8.",
                               required=True)
NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN; the mesh's "
                                  "`replica` axis (set it to the slice count) runs across them.")
HBM_GIB = flags.DEFINE_float("hbm_gib", 0.0, "Usable HBM per chip in GiB; 0: the generation's.")
NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Training examples, for durations in epochs.")
FIND_BATCH = flags.DEFINE_bool("find_batch", False, "Search for the largest global batch that "
                                "fits (a multiple of the data-parallel shards times the "
                                "micro-batches), one compile per probe, from the config's "
                                "batch_size up or down; then report it.")
RESOLUTION = flags.DEFINE_integer("find_batch_resolution", 0, "Stop the search when the batch "
                                  "that fits and the one that does not are at most this far "
                                  "apart; 0: exact (one multiple).")
JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the text report.")

DOES_NOT_FIT = 3


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = launch_flags.config()     # a ConfigError ends the command with its line
    runtime.quiet_libraries()
    runtime.collect_garbage_less()
    # No persistent compilation cache: an executable for compile-only devices cannot be loaded
    # back (JAX warns and compiles again), so writing one only costs time and disk.
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    from vlm_jax.parallel import topology
    from vlm_jax.train import aot
    try:
        devices = topology.devices(TOPOLOGY.value, NUM_SLICES.value)
    except (ValueError, RuntimeError) as e:
        sys.exit(f"launch.compile: {e}")

    def compile_at(batch, probe=False):
        c = config.copy_and_resolve_references()
        c.batch_size = batch
        return aot.compile_step(c, devices, num_train=NUM_TRAIN.value, hbm_gib=HBM_GIB.value,
                                count_flops=not probe, eval_step=not probe)

    search = None
    try:
        if FIND_BATCH.value:
            if topology.hbm_bytes(devices[0], HBM_GIB.value) is None:
                sys.exit(f"launch.compile: no HBM figure for {devices[0].device_kind}; "
                         "set --hbm_gib")
            search = aot.find_batch(lambda b: compile_at(b, probe=True)["fits"],
                                    aot.batch_unit(config, devices),
                                    log=lambda m: print(m, file=sys.stderr, flush=True),
                                    start=config.batch_size, resolution=RESOLUTION.value)
            if search["largest"] is None:
                sys.exit(f"launch.compile: not even a global batch of {search['next']} fits")
        report = compile_at(search["largest"] if search else config.batch_size)
    except (config_lib.ConfigError, ValueError) as e:
        sys.exit(f"launch.compile: {e}")
    report = {"topology": topology.resolve(TOPOLOGY.value), **report}
    if search:
        report["find_batch"] = search
        if not JSON.value:
            nxt = search["next"]
            print(f"largest global batch that fits: {search['largest']}"
                  + ("" if nxt is None else f" ({nxt} does not)"))
    print(json.dumps(report) if JSON.value else aot.table(report, report["topology"]))
    if report["fits"] is False or report.get("eval", {}).get("fits") is False:
        sys.exit(DOES_NOT_FIT)


if __name__ == "__main__":
    runtime.run(main, "launch.compile")
