"""Raw image-text data -> ArrayRecord shards of our record format ({'image': encoded bytes,
'captions': [str], 'key': str}, and 'regions' where the input has boxes), readable as an
`array_record` source.

Inputs: WebDataset tar shards (img2dataset's output: `key.jpg|png|webp` + `key.txt` or
`key.json` per example), or a folder of images plus a CSV / JSONL / parquet table of captions
(one or more rows per image; optionally a column of regions, a list of {'box': [x0, y0, x1, y1]
pixels, 'caption'} or its JSON text, validated against the image: data/regions.py). Each input tar, or each `shard_size` rows of a table, becomes one
output shard. A shard is written under a temporary name and renamed when complete, and its
statistics land beside it last: a re-run skips the shards that have them, so an interrupted
conversion resumes where it stopped. Images are fully decoded once here, so corrupt or truncated
files are dropped (and counted) before training ever sees them.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import multiprocessing
import os
import tarfile
from typing import Iterator

import msgpack
from PIL import Image

from vlm_jax.data import images, records
from vlm_jax.data.regions import RegionError, check as check_regions

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
REASONS = ("missing_image", "corrupt_image", "missing_caption", "empty_caption", "bad_region",
           "unreadable_input")


@dataclasses.dataclass(frozen=True)
class Job:
    """One output shard: a tar to read, or (image path, captions, regions) rows of a table."""
    name: str
    tar: str | None = None
    rows: tuple = ()


def webdataset_jobs(tars: list[str]) -> list[Job]:
    names = [os.path.splitext(os.path.basename(t))[0] for t in tars]
    if len(set(names)) != len(names):
        raise ValueError("input tars share a file name; output shards are named after them")
    return [Job(n, tar=t) for n, t in zip(names, tars)]


def folder_jobs(image_dir: str, table: str, shard_size: int = 10_000, image_column: str = "image",
                caption_column: str = "caption", region_column: str | None = None) -> list[Job]:
    """Rows of `table` grouped by image (first appearance order), `shard_size` images a shard;
    the regions of an image's rows (`region_column`) joined like its captions."""
    grouped: dict[str, tuple[list, list]] = {}
    for i, row in enumerate(read_table(table)):
        if image_column not in row:
            raise KeyError(f"{table} row {i} has no column {image_column!r}; it has {sorted(row)}")
        if region_column and region_column not in row:
            raise KeyError(f"{table} row {i} has no column {region_column!r}; it has {sorted(row)}")
        caps = row.get(caption_column)
        caps = [] if caps is None else [caps] if isinstance(caps, str) else list(caps)
        caps_, regions_ = grouped.setdefault(str(row[image_column]), ([], []))
        caps_.extend(caps)
        if region_column:
            regions_.extend(_regions_cell(row[region_column], f"{table} row {i}"))
    items = [(os.path.join(image_dir, path), tuple(caps), tuple(regs))
             for path, (caps, regs) in grouped.items()]
    return [Job(f"part-{k // shard_size:05d}", rows=tuple(items[k:k + shard_size]))
            for k in range(0, len(items), shard_size)]


def _regions_cell(value, where: str) -> list:
    """A table cell of regions: a list of {'box', 'caption'}, its JSON text, or empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: the regions cell is not JSON: {e}") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: regions must be a list of {{'box', 'caption'}}, got "
                         f"{type(value).__name__}")
    return list(value)


def read_table(path: str) -> list[dict]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if ext in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if ext == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    raise ValueError(f"caption table {path!r}: expected .csv, .jsonl or .parquet")


def _tar_examples(path: str, stats: dict) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per example; files of one example are adjacent in the tar."""
    key, files = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                d, base = os.path.split(member.name)
                if base.startswith("."):
                    continue
                stem, _, ext = base.partition(".")
                k = os.path.join(d, stem)
                if k != key and key is not None:
                    yield key, files
                    files = {}
                key = k
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"{member.name} is cut short ({len(data)} of {member.size} bytes)")
                files[ext.lower()] = data
            # tarfile treats a missing end-of-archive marker (two zero blocks) as a normal end.
            if os.path.getsize(path) < tar.offset + 2 * tarfile.BLOCKSIZE:
                raise EOFError("no end-of-archive marker: the file is cut short")
    except (tarfile.TarError, EOFError, OSError) as e:
        stats["skipped"]["unreadable_input"] += 1
        _note(stats, f"{path}: stopped reading after {stats['written']} examples: "
                     f"{type(e).__name__}: {e}")
        return          # the example being read when the tar broke is incomplete: dropped
    if key is not None:
        yield key, files


def _caption_from(files: dict[str, bytes]) -> list[str] | None:
    if "txt" in files:
        return [files["txt"].decode("utf-8", errors="replace")]
    if "json" in files:
        meta = json.loads(files["json"])
        for field in ("caption", "text", "captions"):
            if meta.get(field) is not None:
                value = meta[field]
                return [value] if isinstance(value, str) else [str(v) for v in value]
    return None


def _note(stats: dict, message: str) -> None:
    if len(stats["examples"]) < 5:
        stats["examples"].append(message)


def _record(key: str, data: bytes | None, captions: list[str] | None, stats: dict,
            max_size: int, regions=None) -> bytes | None:
    if data is None:
        stats["skipped"]["missing_image"] += 1
        return _note(stats, f"{key}: no image")
    if captions is None:
        stats["skipped"]["missing_caption"] += 1
        return _note(stats, f"{key}: no caption")
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        stats["skipped"]["empty_caption"] += 1
        return _note(stats, f"{key}: empty caption")
    try:
        w, h, _ = images.check(data)
    except Exception as e:  # PIL raises many types for bad data
        stats["skipped"]["corrupt_image"] += 1
        return _note(stats, f"{key}: {type(e).__name__}: {e}")
    record = {"image": data, "captions": captions, "key": key}
    if regions:
        try:
            checked = check_regions(regions, w, h, key)
        except RegionError as e:
            stats["skipped"]["bad_region"] += 1
            return _note(stats, str(e))
        record["regions"] = [{"box": b.tolist(), "caption": c} for b, c in checked]
    if max_size and max(w, h) > max_size:
        record["image"] = data = _shrink(data, max_size)
        scale = Image.open(io.BytesIO(data)).size[0] / w     # boxes follow the image
        for r in record.get("regions", ()):
            r["box"] = [v * scale for v in r["box"]]
    return msgpack.packb(record, use_bin_type=True)


def _shrink(data: bytes, max_size: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((max_size, max_size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _examples(job: Job, stats: dict):
    if job.tar is not None:
        for key, files in _tar_examples(job.tar, stats):
            image = next((files[e] for e in IMAGE_EXTS if e in files), None)
            meta = json.loads(files["json"]) if "json" in files else {}
            yield key, image, _caption_from(files), meta.get("regions")
        return
    for path, captions, regions in job.rows:
        try:
            with open(path, "rb") as f:
                image = f.read()
        except OSError:
            image = None
        yield path, image, list(captions), list(regions)


def _packed(job: Job, stats: dict, max_size: int):
    for key, image, captions, regions in _examples(job, stats):
        rec = _record(key, image, captions, stats, max_size, regions)
        if rec is not None:
            stats["written"] += 1
            yield rec


def run_job(job: Job, out_dir: str, max_size: int = 0) -> dict:
    """Writes one shard (atomically) and its stats; returns the stats."""
    stats = {"shard": f"{job.name}.array_record", "written": 0,
             "skipped": dict.fromkeys(REASONS, 0), "examples": []}
    records.write_raw(os.path.join(out_dir, stats["shard"]), _packed(job, stats, max_size))
    _write_json(_stats_path(out_dir, job.name), stats)
    return stats


def _stats_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}.stats.json")


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def convert(jobs: list[Job], out_dir: str, workers: int = 1, max_size: int = 0,
            progress: bool = True) -> dict:
    """Runs the jobs whose shard is not complete yet, in `workers` processes; returns (and
    writes to out_dir/summary.json) the totals over every shard, resumed ones included."""
    if not jobs:
        raise ValueError("nothing to convert: no input shards or rows")
    os.makedirs(out_dir, exist_ok=True)
    done = {j.name for j in jobs if os.path.exists(_stats_path(out_dir, j.name))}
    todo = [j for j in jobs if j.name not in done]
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), initial=len(done), unit="shard", disable=not progress,
               desc="converting")
    if workers > 1 and len(todo) > 1:
        # spawn, not fork: the caller may hold threads (JAX, Grain) that fork would copy mid-lock.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(run_job, j, out_dir, max_size) for j in todo]
            for f in concurrent.futures.as_completed(futures):
                bar.update(1)
                bar.set_postfix(written=f.result()["written"])
    else:
        for j in todo:
            bar.set_postfix(written=run_job(j, out_dir, max_size)["written"])
            bar.update(1)
    bar.close()
    per_shard = []
    for j in jobs:
        with open(_stats_path(out_dir, j.name)) as f:
            per_shard.append(json.load(f))
    summary = {"written": sum(s["written"] for s in per_shard),
               "skipped": {r: sum(s["skipped"][r] for s in per_shard) for r in REASONS},
               "shards": len(jobs), "resumed": len(done),
               "examples": [e for s in per_shard for e in s["examples"]][:20],
               "files": [s["shard"] for s in per_shard]}
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary
