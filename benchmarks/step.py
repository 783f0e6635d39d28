"""Examples/s and MFU of the full train step (towers, loss, optimizer) for named model sizes.

  python benchmarks/step.py                                  # tiny, softmax and sigmoid, float32
  python benchmarks/step.py --sizes B/16 --dtype bfloat16 --batch 0 --scan --remat \
      dots_with_no_batch_dims_saveable                        # on a GPU: the largest batch that fits
  python benchmarks/step.py --json                           # one JSON object per line
  python benchmarks/step.py --sizes B/16 --devices 1         # on one of the host's devices
  python benchmarks/step.py --sizes S/16 --losses sigmoid --patch_dropout 0,0.5,0.75
                                                             # FLIP: speed-up against the first

FLOPs per step are the model's, as the trainer's `mfu` metric counts them
(vlm_jax/train/flops.py): XLA's cost analysis of the same step without scan, remat or
micro-batches, lowered for the whole mesh before partitioning, so they are global. The peak is
measured in the same run: the best of several large matmuls in the model's dtype (accumulating
in float32), on one device, times the device count. MFU = model FLOPs / step time / peak.
Batches are synthetic (random pixels and tokens); nothing is read from disk.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (patch, width, depth, heads, mlp) image, (width, depth, heads, mlp) text, image size,
# text length, embedding width. The image towers are ViT-Ti/S/B/L and SigLIP's So400m.
SIZES = {
    "tiny": ((4, 128, 4, 4, 512), (128, 4, 4, 512), 32, 32, 128),
    "S/16": ((16, 384, 12, 6, 1536), (384, 12, 6, 1536), 224, 64, 384),
    "B/16": ((16, 768, 12, 12, 3072), (512, 12, 8, 2048), 224, 77, 512),
    "L/14": ((14, 1024, 24, 16, 4096), (768, 12, 12, 3072), 224, 77, 768),
    "So400m/14": ((14, 1152, 27, 16, 4304), (1152, 27, 16, 4304), 224, 64, 1152),
}


def config(size: str, loss: str, batch: int, args, patch_dropout: float = 0.0):
    from vlm_jax import config as config_lib
    (patch, iw, idepth, iheads, imlp), (tw, tdepth, theads, tmlp), image, length, embed = SIZES[size]
    c = config_lib.defaults()
    c.batch_size = batch
    c.total_steps = 1000
    c.microbatches = args.microbatches
    c.contrastive.name = loss
    c.contrastive.impl = args.impl
    c.data.image_size = image
    c.tokenizer.max_len = length
    c.model.embed_dim = embed
    c.model.dtype = args.dtype
    c.model.remat = args.remat
    c.model.scan = args.scan
    c.model.image.patch_dropout = patch_dropout
    i, t = c.model.image, c.model.text
    i.patch_size, i.width, i.depth, i.heads, i.mlp_dim = patch, iw, idepth, iheads, imlp
    t.width, t.depth, t.heads, t.mlp_dim = tw, tdepth, theads, tmlp
    # CLIP: class token, causal text; SigLIP: attention-pooled image, bidirectional text.
    i.pool = "cls" if loss == "softmax" else "map"
    t.causal = loss == "softmax"
    if loss == "sigmoid":
        c.contrastive.sigmoid_bias_init = -math.log(batch)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = args.mesh
    c.optim.mu_dtype = args.mu_dtype
    return c


def peak_flops(dtype: str, n: int, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` n x n x n matmuls on one device (float32 accumulation)."""
    import jax
    import jax.numpy as jnp
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.dtype(dtype)) for i in (0, 1))
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times)


def _lower(cfg, devices: int = 0):
    """(setup, the lowered train step, a synthetic batch), on the first `devices` (0: all)."""
    import jax

    from vlm_jax.data import pipeline
    from vlm_jax.parallel import mesh as mesh_lib
    from vlm_jax.setup import Setup
    setup = Setup(cfg, mesh_lib.from_config(cfg, jax.devices()[:devices or None]))
    batch = pipeline.to_global(setup.synthetic_batch(), setup.batch_sh)
    with setup.context():
        lowered = setup.train_step().lower(setup.abstract_state(), batch, setup.step_rng)
    return setup, lowered, batch


def largest_batch(size: str, loss: str, args) -> int:
    """The largest power-of-two global batch whose compiled step fits in 90% of the device's
    memory (by XLA's memory analysis); needs a device that reports its memory limit."""
    import jax

    from vlm_jax.train import aot
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        raise SystemExit("--batch 0 needs a device that reports its memory (a GPU or TPU)")
    n = _count(args) * args.microbatches
    best, batch = None, 16 * n
    while batch <= 1 << 16:
        try:
            compiled = _lower(config(size, loss, batch, args), args.devices)[1].compile()
            fits = aot.total_bytes(compiled) < 0.9 * stats["bytes_limit"]
        except Exception as e:        # XLA may refuse to compile what cannot fit
            if "RESOURCE_EXHAUSTED" not in str(e) and "memory" not in str(e).lower():
                raise
            fits = False
        if not fits:
            break
        best, batch = batch, batch * 2
    if best is None:
        raise SystemExit(f"{size}: not even batch {16 * n} fits")
    return best


def measure(size: str, loss: str, batch: int, peak: float, args, dropout: float = 0.0) -> dict:
    import jax
    from vlm_jax.train import aot, flops as flops_lib, state as state_lib
    cfg = config(size, loss, batch, args, dropout)
    setup, lowered, batch_arrays = _lower(cfg, args.devices)
    step = compiled = lowered.compile()          # compiled once; the loop calls it directly
    flops = (lowered.cost_analysis()["flops"] if flops_lib.is_plain(cfg)
             else flops_lib.step_flops(setup, batch_arrays))
    state = setup.init_state()
    times = []
    with setup.context():
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            state, m = step(state, batch_arrays, setup.step_rng)
            m["loss"].block_until_ready()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    used = _peak_bytes()
    return {"size": size, "loss": loss, "dtype": cfg.model.dtype, "batch": batch,
            "devices": setup.mesh.size, "remat": cfg.model.remat, "scan": cfg.model.scan,
            "microbatches": cfg.microbatches, "patch_dropout": dropout,
            "params_m": state_lib.num_params(state.params) / 1e6,
            "step_s": t, "examples_per_s": batch / t, "tflop_per_step": flops / 1e12,
            "achieved_tflop_s": flops / t / 1e12, "peak_tflop_s": peak / 1e12,
            "mfu": flops / t / peak, "device_gib": aot.total_bytes(compiled) / 2**30,
            "peak_gib": None if used is None else used / 2**30,
            "final_loss": float(m["loss"]), "device": jax.devices()[0].device_kind}


def _peak_bytes() -> int | None:
    """The device's high-water mark of allocated bytes since the process started (GPU and TPU
    report it; None on CPU): measured next to XLA's analysis, for one size and loss a run."""
    import jax
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def _count(args) -> int:
    import jax
    return args.devices or jax.device_count()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="tiny", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--losses", default="softmax,sigmoid")
    p.add_argument("--batch", type=int, default=256, help="global batch; 0: the largest that fits")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--mu_dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="none")
    p.add_argument("--scan", action="store_true")
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--impl", default="gather", choices=("gather", "ring"))
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes")
    p.add_argument("--devices", type=int, default=0,
                   help="run on the first N devices (0: all), e.g. for a scaling table")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--probe", type=int, default=0, help="peak matmul size; 0: 2048 CPU, 8192 else")
    p.add_argument("--patch_dropout", default="0",
                   help="comma-separated shares of patches dropped (model.image.patch_dropout); "
                        "each row's speed-up is against the first")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.mesh = tuple(int(x) for x in args.mesh.split(","))
    import jax
    if args.devices > jax.device_count():
        raise SystemExit(f"--devices {args.devices}: only {jax.device_count()} available")
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; choose from {', '.join(SIZES)}")
    probe = args.probe or (2048 if jax.default_backend() == "cpu" else 8192)
    peak = peak_flops(args.dtype, probe) * _count(args)
    if not args.json:
        print(f"peak {peak / 1e12:.3f} TFLOP/s ({args.dtype} {probe}^3 matmul, "
              f"{_count(args)} x {jax.devices()[0].device_kind})")
        print("| size | loss | dtype | batch | patch dropout | params | step | speed-up | "
              "examples/s | TFLOP/step | TFLOP/s | MFU | device memory | measured peak |")
        print("|---" * 14 + "|")
    for size in args.sizes.split(","):
        for loss in args.losses.split(","):
            batch = args.batch or largest_batch(size, loss, args)
            base = None
            for dropout in (float(x) for x in args.patch_dropout.split(",")):
                r = measure(size, loss, batch, peak, args, dropout)
                base = base or r["step_s"]
                r["speedup"] = base / r["step_s"]
                measured = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
                if args.json:
                    print(json.dumps(r), flush=True)
                    continue
                print(f"| {size} | {loss} | {r['dtype']} | {batch} | {dropout:g} | "
                      f"{r['params_m']:.1f}M | {r['step_s'] * 1e3:.1f} ms | "
                      f"{r['speedup']:.2f}x | {r['examples_per_s']:.1f} | "
                      f"{r['tflop_per_step']:.4f} | {r['achieved_tflop_s']:.3f} | "
                      f"**{100 * r['mfu']:.1f}%** | {r['device_gib']:.2f} GiB | {measured} |",
                      flush=True)


if __name__ == "__main__":
    main()
