"""Input-pipeline throughput: our Grain train pipeline vs a plain single-threaded PIL loop.

Writes `--images` real JPEGs (photo-like content, 256-512 px sides, quality 90) as ArrayRecord
shards of our record format, then measures, in the same run:
  raw_decode_img_s  a plain loop, one thread: read record, unpack, PIL decode, resize to 224
  pipeline_img_s    the train pipeline: decode + random-resized-crop to 224 + flip + caption
                    sampling + tokenize + batch, with `--workers` Grain worker processes
The baseline is measured before and after the pipeline and averaged. The pipeline's worker
start-up is excluded (the first batches are a warm-up).

  python benchmarks/input_pipeline.py                  # a table
  python benchmarks/input_pipeline.py --json           # {"pipeline_img_s", "raw_decode_img_s", "ratio"}
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_images(root: str, n: int, shards: int = 4) -> str:
    from PIL import Image

    from vlm_jax.data import records
    rng = np.random.default_rng(0)

    def example(i):
        w, h = rng.integers(256, 513, size=2)
        # Smooth colour field plus texture: compresses like a photo (~20-40 KB at q90).
        base = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8))
        img = np.asarray(base.resize((int(w), int(h)), Image.BICUBIC), np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        return {"image": buf.getvalue(), "captions": [f"a photo of thing {i}", f"thing {i}"]}

    per = -(-n // shards)
    for s in range(shards):
        records.write(os.path.join(root, f"bench-{s:05d}.array_record"),
                      (example(i) for i in range(s * per, min(n, (s + 1) * per))))
    return os.path.join(root, "bench-*.array_record")


def raw_decode(pattern: str, seconds: float) -> float:
    """img/s of the plain loop over the records (cycling), for about `seconds`."""
    import grain
    import msgpack
    from PIL import Image

    from vlm_jax.data.sources import expand_paths
    src = grain.sources.ArrayRecordDataSource(expand_paths(pattern))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ex = msgpack.unpackb(src[n % len(src)], raw=False)
        img = Image.open(io.BytesIO(ex["image"])).convert("RGB").resize((224, 224), Image.BILINEAR)
        np.asarray(img)
        n += 1
    return n / (time.perf_counter() - t0)


def pipeline_rate(pattern: str, workers: int, threads: int, batch: int, seconds: float) -> float:
    from absl import flags

    from vlm_jax import config as config_lib
    from vlm_jax.data import pipeline, tokenizer
    flags.FLAGS.mark_as_parsed()    # grain's worker processes read absl flags
    c = config_lib.defaults()
    c.batch_size = batch
    c.data.sources.bench = config_lib.source(path=pattern)
    c.data.image_size, c.data.crop, c.data.crop_padding, c.data.flip = 224, "random_resized", 0, True
    c.data.num_workers, c.data.num_threads, c.data.prefetch = workers, threads, 2
    c.tokenizer.max_len = 64
    config_lib.validate(c)
    it = iter(pipeline.train_dataset(c, tokenizer.build(c))[0])
    for _ in range(3 * max(workers, 1)):    # warm-up: workers start and fill their buffers
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["image"])
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4, help="Grain read threads per worker")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        pattern = write_images(root, a.images)
        before = raw_decode(pattern, a.seconds / 2)
        piped = pipeline_rate(pattern, a.workers, a.threads, a.batch, a.seconds)
        after = raw_decode(pattern, a.seconds / 2)
    raw = (before + after) / 2
    out = {"pipeline_img_s": round(piped, 1), "raw_decode_img_s": round(raw, 1),
           "ratio": round(piped / raw, 3)}
    if a.json:
        print(json.dumps(out))
        return
    print(f"{a.images} JPEGs 256-512 px -> 224, {os.cpu_count()} CPUs")
    print(f"plain PIL loop, 1 thread   {raw:8.1f} img/s  (before {before:.1f}, after {after:.1f})")
    print(f"pipeline, {a.workers} workers        {piped:8.1f} img/s  ratio {piped / raw:.2f}")


if __name__ == "__main__":
    main()
