"""The published setups compiled for TPU slices on this machine: per-chip memory, fits,
collective bytes, gather against ring (the table "At pod scale, compiled for TPU" in
docs/BENCHMARKS.md).

  python benchmarks/pod.py                                 # the whole grid (hours on 2 cores)
  python benchmarks/pod.py --setups siglip-b16-256 --topologies v5e-256 --batches 1048576
  python benchmarks/pod.py --json                          # one JSON object per row

Each row is `launch.compile`'s report (vlm_jax/train/aot.py: the run's own setup and jitted
step, lowered on abstract shapes and compiled by libtpu for the slice's compile-only devices) of
`configs/published.py:NAME` with the contrastive loss over global negatives gathered or passed
around the ring, at the memory settings a pod run would use (`--remat`, `--fsdp`) and in micro-batches of at most `--micro_rows` rows per chip (GradCache: every negative kept).
A row that does not fit shows the compiler's own figure for the temporaries it needed.
Nothing runs on a TPU: the figures are XLA's memory analysis and the compiled program's
collectives (a loop body's counted once), not timings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# JAX runs on this machine's CPU; the slices' devices are compile-only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def config(name: str, impl: str, batch: int, chips: int, args):
    """configs/published.py:NAME at `batch` on `chips`, in micro-batches of <= micro_rows rows
    per chip."""
    from configs import published
    c = published.get_config(name)
    c.batch_size, c.contrastive.impl = batch, impl
    c.model.remat = args.remat
    if args.fsdp:                 # params and optimizer state sharded over fsdp chips
        c.mesh.data, c.mesh.fsdp = (1, -1) if args.fsdp < 0 else (-1, args.fsdp)
    if args.image_size:
        c.data.image_size = args.image_size
    per_chip = batch // chips
    c.microbatches = max(1, -(-per_chip // args.micro_rows))
    while batch % (chips * c.microbatches):         # the next count that splits every shard
        c.microbatches += 1
    return c


def row(name, impl, topo, batch, args) -> dict:
    from vlm_jax.parallel import topology
    from vlm_jax.train import aot
    devices = topology.devices(topo)
    t0 = time.perf_counter()
    r = aot.compile_step(config(name, impl, batch, len(devices), args), devices,
                         count_flops=False, eval_step=False)
    r.update(setup=name, impl=impl, topology=topo, compile_s=time.perf_counter() - t0)
    return r


def markdown(r: dict) -> str:
    ok = r["error"] is None
    gib = (lambda k: f"{r[k]:.2f}") if ok else (lambda k: "")
    temps = f"{r['temporaries_gib']:.2f}" if ok else f"needs {r['required_gib']:.1f}"
    moved = ""
    if ok:
        c = r["collectives"]
        moved = ", ".join(f"{k} {v['bytes'] / 2**20:.0f}" for k, v in c.items() if v["count"])
    fits = ("**yes**" if r["fits"] else "no") + (f" ({100 * r['total_gib'] / r['hbm_gib']:.0f}%)"
                                                if ok else "")
    return (f"| {r['setup']} | {r['impl']} | {r['topology']} | {r['global_batch']:,} | "
            f"{r['microbatches']} | {gib('arguments_gib')} | {temps} | {gib('total_gib')} | "
            f"{r['hbm_gib']:.2f} | {fits} | {moved} | {r['compile_s']:.0f} |")


HEADER = ("| setup | negatives | slice | global batch | micro-batches | arguments GiB | "
          "temporaries GiB | total GiB | HBM GiB | fits (of HBM) | collectives MiB per chip | "
          "compile s |\n|" + "---|" * 12)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", default="siglip-b16-256,clip-l14-224,siglip-so400m14-384",
                   help="comma-separated configs/published.py names")
    p.add_argument("--impls", default="gather,ring")
    p.add_argument("--topologies", default="v5e-256,v6e-16")
    p.add_argument("--batches", default="32768,262144,1048576", help="global batches")
    p.add_argument("--image_size", type=int, default=0, help="override the setups' image size")
    p.add_argument("--remat", default="sublayers")
    p.add_argument("--fsdp", type=int, nargs="?", const=-1, default=0,
                   help="shard params and optimizer state over this many chips (mesh.fsdp; "
                   "alone: all of them) instead of replicating them; a dimension that the "
                   "count does not divide stays replicated (So400m's 1152 and 4304: use 16)")
    p.add_argument("--micro_rows", type=int, default=512,
                   help="at most this many rows per chip in one micro-batch")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    args = p.parse_args(argv)
    split = lambda s, f=str: [f(x) for x in s.split(",") if x]
    if not args.json:
        print(HEADER, flush=True)
    for name in split(args.setups):
        for topo in split(args.topologies):
            for batch in split(args.batches, int):
                for impl in split(args.impls):
                    r = row(name, impl, topo, batch, args)
                    print(json.dumps(r) if args.json else markdown(r), flush=True)


if __name__ == "__main__":
    main()
