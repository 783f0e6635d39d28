"""Ahead-of-time compiles of a run's train step for devices that need not be attached.

`compile_step(config, devices)` builds the run as `launch.train` would (the data-free `Setup`)
on a mesh over `devices`, typically a TPU slice's compile-only devices from
`vlm_jax.parallel.topology`, lowers the train step on abstract state and batch shapes, compiles
it, and reports per chip: memory by kind against the chip's HBM, the collectives in the program
and the largest arrays every chip holds whole; globally, the model FLOPs per step. Nothing is
executed and no data is read.
"""
from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import numpy as np

from vlm_jax import rules
from vlm_jax.data import tokenizer as tokenizer_lib
from vlm_jax.parallel import mesh as mesh_lib, sharding, topology
from vlm_jax.setup import Setup
from vlm_jax.train import flops as flops_lib

GIB = 2**30
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8}
_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-done)?\(")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
# The TPU compiler's two out-of-memory errors: temporaries alone over the HBM (refused early),
# and the whole program's buffers over it once assigned (at a batch just over the limit).
_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM "
                  r"\(([\d.]+)([KMGT]?)\)")
_OOM_ASSIGNED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm\. Exceeded hbm "
                           r"capacity by ([\d.]+)([KMGT]?)")


def _per_chip_bytes(tree) -> int:
    """Bytes one chip holds of `tree` (ShapeDtypeStructs with shardings)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def collectives(hlo_text: str) -> dict:
    """{kind: {"count", "bytes"}} of a compiled program's collectives, bytes as each chip's
    result. A loop body's collectives count once, as the program text holds them."""
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m is None or "=" not in line[:m.start()]:
            continue
        result = line[line.index("=") + 1:m.start()]       # an array type or a tuple of them
        size = sum(_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
                   for t, dims in _ARRAY.findall(result))
        out[m.group(1)]["count"] += 1
        out[m.group(1)]["bytes"] += size
    return out


def out_of_memory(error: Exception) -> dict | None:
    """{"required_gib", "available_gib"} from the TPU compiler's out-of-memory error, else None."""
    scale = {"": 1 / GIB, "K": 1 / 2**20, "M": 1 / 2**10, "G": 1.0, "T": 2**10}
    gib = lambda m, i: float(m.group(i)) * scale[m.group(i + 1)]
    if m := _OOM.search(str(error)):
        return {"required_gib": gib(m, 1), "available_gib": gib(m, 3)}
    if m := _OOM_ASSIGNED.search(str(error)):      # used (all of it) + what did not fit
        return {"required_gib": gib(m, 1) + gib(m, 5), "available_gib": gib(m, 3)}
    return None


def replicated(state, top: int = 5) -> list:
    """The `top` largest arrays of `state` that every chip holds whole: [(path, MiB)]."""
    rows = [(rules.path_str(path), math.prod(x.shape) * np.dtype(x.dtype).itemsize)
            for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if x.sharding.is_fully_replicated and math.prod(x.shape) > 1]
    return [(p, b / 2**20) for p, b in sorted(rows, key=lambda r: -r[1])[:top]]


def total_bytes(compiled) -> int:
    """Per-device bytes a compiled program needs: arguments, outputs and temporaries, less the
    outputs that reuse (donated) argument buffers."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def _compile(lowered) -> tuple:
    """(compiled program or None, its per-chip memory in bytes by kind or the compiler's
    out-of-memory figures). Other compile errors propagate."""
    try:
        compiled = lowered.compile()
    except Exception as e:            # the compiler refuses what cannot fit
        oom = out_of_memory(e)
        if oom is None:
            raise
        return None, {**oom, "error": str(e).splitlines()[0][:300]}
    m, total = compiled.memory_analysis(), total_bytes(compiled)
    return compiled, {"arguments_gib": m.argument_size_in_bytes / GIB,
                      "outputs_gib": m.output_size_in_bytes / GIB,
                      "temporaries_gib": m.temp_size_in_bytes / GIB,
                      "aliased_gib": m.alias_size_in_bytes / GIB, "total_gib": total / GIB,
                      "error": None}


def _eval_programs(s, params) -> tuple[int, dict]:
    """(global batch, {name: lowered program}) of the evaluators' programs: the image and the
    text tower at `eval.batch_size` (rounded to the data shards), as `vlm_jax.evals` runs them."""
    from vlm_jax.evals.common import Embedder
    e = Embedder.from_setup(s)
    batch = s.batch_shapes(e.batch)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        return e.batch, {"image": e.features(("img/normed",)).lower(params, batch["image"]),
                         "text": e.encode_text.lower(params, batch["tokens"], batch["mask"])}


def compile_step(config, devices, *, num_train: int | None = None, hbm_gib: float = 0.0,
                 count_flops: bool = True, eval_step: bool = True) -> dict:
    """The report of the train step of `config` compiled for `devices` (see the module doc),
    and with `eval_step` of the evaluators' tower programs ("eval": {"image", "text"}: their
    per-chip total or the compiler's out-of-memory figures).
    `hbm_gib` overrides the chip's HBM (`topology.HBM_GIB`). A program too large for the chip
    comes back as `fits: False` with the compiler's figures, not as an exception. Without
    `count_flops` (a batch search's probes) `tflop_per_step` is None: counting lowers the plain
    step a second time."""
    mesh = mesh_lib.from_config(config, devices)
    s = Setup(config, mesh, num_train=num_train,
              tokenizer=tokenizer_lib.build(config, stand_in=True))
    # Shapes and shardings outside the mesh context: eager helpers must not land on devices that
    # cannot run them.
    state, batch = s.abstract_state(), s.batch_shapes()
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = jax.ShapeDtypeStruct(s.step_rng.shape, s.step_rng.dtype, sharding=repl)
    hbm = topology.hbm_bytes(devices[0], hbm_gib)
    report = {
        "device_kind": devices[0].device_kind, "chips": len(devices),
        "slices": len({getattr(d, "slice_index", 0) for d in devices}),
        "mesh": dict(mesh.shape), "global_batch": config.batch_size,
        "microbatches": config.microbatches, "hbm_gib": None if hbm is None else hbm / GIB,
        "params_gib": _per_chip_bytes(state.params) / GIB,
        "optimizer_gib": _per_chip_bytes((state.opt_state, state.loss_ema, state.step)) / GIB,
        "teacher_gib": _per_chip_bytes(state.teacher) / GIB,
        "batch_gib": _per_chip_bytes(batch) / GIB,
        "replicated_mib": replicated(state),
        "tflop_per_step": flops_lib.step_flops(s, batch) / 1e12 if count_flops else None,
    }
    with s.context():
        lowered = s.train_step().lower(state, batch, rng)
    compiled, memory = _compile(lowered)
    report.update(memory)
    if compiled is None:
        return {**report, "fits": False}
    report.update({
        "fits": None if hbm is None else memory["total_gib"] * GIB <= hbm,
        "margin_gib": None if hbm is None else hbm / GIB - memory["total_gib"],
        "collectives": collectives(compiled.as_text())})
    if eval_step:
        eval_batch, programs = _eval_programs(s, state.params)
        report["eval"] = {"global_batch": eval_batch,
                          **{name: _compile(low)[1] for name, low in programs.items()}}
        report["eval"]["fits"] = None if hbm is None else all(
            report["eval"][name]["error"] is None and report["eval"][name]["total_gib"] * GIB
            <= hbm for name in programs)
    return report


def table(report: dict, name: str = "") -> str:
    """The report as a few lines of text."""
    r = report
    head = (f"{name} {r['chips']} x {r['device_kind']}" + (f" ({r['slices']} slices)"
            if r["slices"] > 1 else "") + f", mesh {r['mesh']}, global batch {r['global_batch']}"
            + (f" in {r['microbatches']} micro-batches" if r["microbatches"] > 1 else ""))
    hbm = "unknown HBM" if r["hbm_gib"] is None else f"HBM {r['hbm_gib']:.2f} GiB"
    lines = [head.strip(), f"model FLOPs per step: {r['tflop_per_step']:.4g} TFLOP (global)"
             if r["tflop_per_step"] is not None else "model FLOPs per step: not counted",
             f"per chip: params {r['params_gib']:.3f} GiB, optimizer state "
             f"{r['optimizer_gib']:.3f} GiB, batch {r['batch_gib']:.3f} GiB"
             + (f", EMA teacher {r['teacher_gib']:.3f} GiB" if r.get("teacher_gib") else "")]
    if r["error"]:
        lines += [f"DOES NOT FIT: temporaries alone need {r['required_gib']:.2f} GiB of "
                  f"{r['available_gib']:.2f} GiB available", f"  compiler: {r['error']}"]
        return "\n".join(lines)
    lines.append(f"per chip: arguments {r['arguments_gib']:.3f} + outputs {r['outputs_gib']:.3f}"
                 f" + temporaries {r['temporaries_gib']:.3f} - aliased {r['aliased_gib']:.3f}"
                 f" = {r['total_gib']:.3f} GiB of {hbm}")
    if r["fits"] is not None:
        verdict = "FITS" if r["fits"] else "DOES NOT FIT"
        lines.append(f"{verdict}: {abs(r['margin_gib']):.3f} GiB "
                     f"{'to spare' if r['fits'] else 'over'} "
                     f"({100 * r['total_gib'] / r['hbm_gib']:.0f}% of HBM)")
    used = [(k, v) for k, v in r["collectives"].items() if v["count"]]
    lines.append("collectives per chip (a loop body once): " + (", ".join(
        f"{k} {v['count']} x, {v['bytes'] / 2**20:.1f} MiB" for k, v in used) or "none"))
    if r.get("eval"):
        e = r["eval"]
        towers = ", ".join(f"{name} tower " + (f"{e[name]['total_gib']:.3f} GiB" if e[name]["error"]
                                                is None else f"needs {e[name]['required_gib']:.2f} GiB")
                           for name in ("image", "text"))
        verdict = "" if e["fits"] is None else " (FITS)" if e["fits"] else " (DOES NOT FIT: lower eval.batch_size)"
        lines.append(f"evaluation at global batch {e['global_batch']}, per chip: {towers}{verdict}")
    if r["replicated_mib"]:
        lines.append("largest arrays on every chip: " + ", ".join(
            f"{p} {mib:.1f} MiB" for p, mib in r["replicated_mib"]))
    return "\n".join(lines)



def batch_unit(config, devices) -> int:
    """The step between candidate global batches: the data-parallel shards times the
    micro-batches (each micro-batch splits evenly over the shards)."""
    mesh = mesh_lib.from_config(config, devices)
    return sharding.batch_shards(mesh, sharding.logical_rules(config)) * config.microbatches


def find_batch(fits, unit: int, limit: int = 1 << 24, log=print, *, start: int | None = None,
               resolution: int | None = None) -> dict:
    """The largest multiple of `unit` (at most `limit`) for which `fits(batch)` holds: from
    `start` (rounded down to a multiple of `unit`; default `unit`), doubling until a batch does
    not fit (or halving until one does), then bisecting between the last that did and the first
    that did not until they are at most `resolution` apart (default `unit`: exact). Memory grows
    with the batch, so one boundary exists. Each probe is logged. {"largest": batch or None,
    "next": the smallest probed batch above it that does not fit (None at the limit),
    "probes": [(batch, fits)]}."""
    probes = []
    step = max(unit, (resolution or unit) // unit * unit)

    def probe(b):
        ok = bool(fits(b))
        probes.append((b, ok))
        log(f"global batch {b}: {'fits' if ok else 'does not fit'}")
        return ok

    b = max(unit, min(limit, start or unit) // unit * unit)
    if probe(b):
        good, bad = b, b * 2
        while bad <= limit and probe(bad):
            good, bad = bad, bad * 2
        if bad > limit:
            return {"largest": good, "next": None, "probes": probes}
    else:
        good, bad = None, b
        while bad > unit:
            half = bad // 2 // unit * unit
            if probe(half):
                good = half
                break
            bad = half
        if good is None:
            return {"largest": None, "next": bad, "probes": probes}
    while bad - good > step:                       # good fits, bad does not
        mid = good + (bad - good) // unit // 2 * unit
        good, bad = (mid, bad) if probe(mid) else (good, mid)
    return {"largest": good, "next": bad, "probes": probes}
