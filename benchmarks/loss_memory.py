"""Per-device memory (and step time) of the contrastive losses, gather vs ring, on fake devices.

For each device count N, a child process with N fake CPU devices compiles value-and-grad (with
respect to both embeddings, the scale and the bias) of every loss x impl at a fixed per-device
batch b, and reads XLA's per-device temporary memory from `compiled.memory_analysis()`.
`--time` also runs both impls on 8 devices and prints the ring / gather step-time ratio, measured
in the same run with the calls interleaved.

  python benchmarks/loss_memory.py                      # table, N = 8, 16, 32, b = 1024, D = 768
  python benchmarks/loss_memory.py --json               # one JSON list of result objects
  python benchmarks/loss_memory.py --time               # also the step-time ratio on 8 devices

Absolute numbers are XLA:CPU's; TPU and GPU compilers differ in constants, not in how memory
scales with N.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

LOSSES = ("softmax", "sigmoid")
IMPLS = ("gather", "ring")


def _child(n: int, b: int, d: int, time_it: bool, repeats: int) -> list[dict]:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vlm_jax.losses.contrastive import contrastive_loss
    from vlm_jax.parallel.mesh import make_mesh

    mesh = make_mesh({"data": n})
    batch, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    B = n * b

    def compiled(loss, impl):
        f = lambda zi, zt, s, bias: contrastive_loss(loss, zi, zt, s, bias, impl=impl, mesh=mesh)[0]
        vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
        spec = (jax.ShapeDtypeStruct((B, d), jnp.float32, sharding=batch),) * 2 + (
            jax.ShapeDtypeStruct((), jnp.float32, sharding=repl),) * 2
        return vg.lower(*spec).compile()

    rows = []
    fns = {}
    for loss in LOSSES:
        for impl in IMPLS:
            c = compiled(loss, impl)
            fns[loss, impl] = c
            rows.append({"loss": loss, "impl": impl, "n_devices": n, "per_device_batch": b,
                         "dim": d, "temp_bytes": int(c.memory_analysis().temp_size_in_bytes)})
    if time_it:
        rng = np.random.default_rng(0)
        z = rng.normal(size=(2, B, d)).astype(np.float32)
        z /= np.linalg.norm(z, axis=-1, keepdims=True)
        args = (jax.device_put(z[0], batch), jax.device_put(z[1], batch),
                jax.device_put(np.float32(10.0), repl), jax.device_put(np.float32(-10.0), repl))
        for loss in LOSSES:
            times = {impl: [] for impl in IMPLS}
            for impl in IMPLS:
                jax.block_until_ready(fns[loss, impl](*args))        # warm-up
            for _ in range(repeats):
                for impl in IMPLS:                                   # interleaved: fair to both
                    t0 = time.perf_counter()
                    jax.block_until_ready(fns[loss, impl](*args))
                    times[impl].append(time.perf_counter() - t0)
            med = {impl: float(np.median(t)) for impl, t in times.items()}
            for row in rows:
                if row["loss"] == loss:
                    row["step_seconds"] = med[row["impl"]]
                    row["ring_over_gather_time"] = med["ring"] / med["gather"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="8,16,32", help="comma-separated device counts")
    p.add_argument("--batch", type=int, default=1024, help="per-device batch b")
    p.add_argument("--dim", type=int, default=768, help="embedding dimension D")
    p.add_argument("--time", action="store_true", help="also time gather vs ring on 8 devices")
    p.add_argument("--time-batch", type=int, default=512, help="per-device batch for --time")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        rows = _child(a.child, a.batch, a.dim, a.time, a.repeats)
        print(json.dumps(rows))
        return

    def run(n, b, time_it):
        cmd = [sys.executable, __file__, "--child", str(n), "--batch", str(b), "--dim", str(a.dim),
               "--repeats", str(a.repeats)] + (["--time"] if time_it else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env={
            **os.environ, "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 os.environ.get("PYTHONPATH", "")])})
        if out.returncode:
            sys.exit(f"benchmark child with {n} devices failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = [r for n in map(int, a.devices.split(",")) for r in run(n, a.batch, False)]
    timed = run(8, a.time_batch, True) if a.time else []
    if a.json:
        print(json.dumps(rows + timed))
        return
    print(f"per-device temp memory (MiB), value_and_grad, b = {a.batch}, D = {a.dim}")
    ns = sorted({r["n_devices"] for r in rows})
    print(f"{'loss':8s} {'impl':7s} " + " ".join(f"N={n:<6d}" for n in ns) + "  change first->last")
    for loss in LOSSES:
        for impl in IMPLS:
            mem = [next(r["temp_bytes"] for r in rows if r["loss"] == loss and r["impl"] == impl
                        and r["n_devices"] == n) / 2**20 for n in ns]
            print(f"{loss:8s} {impl:7s} " + " ".join(f"{m:<8.1f}" for m in mem)
                  + f"  {100 * (mem[-1] / mem[0] - 1):+.1f}%")
    if timed:
        print(f"\nstep time on 8 devices, b = {a.time_batch}, median of {a.repeats} (interleaved)")
        for loss in LOSSES:
            r = {x["impl"]: x for x in timed if x["loss"] == loss}
            print(f"{loss:8s} gather {r['gather']['step_seconds'] * 1e3:8.1f} ms   ring "
                  f"{r['ring']['step_seconds'] * 1e3:8.1f} ms   ring/gather "
                  f"{r['ring']['ring_over_gather_time']:.2f}")


if __name__ == "__main__":
    main()
