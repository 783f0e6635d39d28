r"""Converts image-text data into ArrayRecord shards for an `array_record` source.

WebDataset / img2dataset tar shards:
  python -m launch.convert --input '/data/cc12m/{00000..00099}.tar' --output /data/cc12m_ar
  python -m launch.convert --input '/data/cc12m/*.tar' --output /data/cc12m_ar --workers 8

A folder of images plus a caption table (CSV, JSONL or parquet; paths relative to --images):
  python -m launch.convert --images /data/photos --captions /data/photos/captions.csv \
      --output /data/photos_ar

Re-running the same command resumes: finished shards are skipped. The summary (records written,
inputs skipped by reason, a few examples of each) is printed and saved as OUTPUT/summary.json.
"""
from __future__ import annotations

import glob
import os
import re

from absl import app, flags

from launch import runtime
from vlm_jax.data import convert

INPUT = flags.DEFINE_list("input", [], "WebDataset tar shards: files, globs or a {000..099} range.")
IMAGES = flags.DEFINE_string("images", None, "Folder the caption table's image paths are under.")
CAPTIONS = flags.DEFINE_string("captions", None, "Caption table: .csv, .jsonl or .parquet.")
OUTPUT = flags.DEFINE_string("output", None, "Folder for the ArrayRecord shards.", required=True)
WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes converting shards.")
MAX_SIZE = flags.DEFINE_integer("max_size", 0, "Re-encode images larger than this (longest "
                                "side, pixels) as JPEG at this size; 0 keeps the original bytes.")
SHARD_SIZE = flags.DEFINE_integer("shard_size", 10_000, "Images per output shard (tables only).")
IMAGE_COLUMN = flags.DEFINE_string("image_column", "image", "Table column with the image path.")
CAPTION_COLUMN = flags.DEFINE_string("caption_column", "caption",
                                     "Table column with the caption (a string or a list).")
REGION_COLUMN = flags.DEFINE_string(
    "region_column", None, "Table column with boxes and their descriptions: a list of "
    "{'box': [x0, y0, x1, y1] in pixels, 'caption'} or its JSON text (validated against the image).")


def expand(patterns: list[str]) -> list[str]:
    """Globs and brace ranges ({00000..00099}, as img2dataset names shards) -> existing files."""
    files = []
    for pattern in patterns:
        m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
        parts = ([pattern[:m.start()] + str(i).zfill(len(m.group(1))) + pattern[m.end():]
                  for i in range(int(m.group(1)), int(m.group(2)) + 1)] if m else [pattern])
        for part in parts:
            found = sorted(glob.glob(os.path.expanduser(part)))
            if not found:
                raise app.UsageError(f"no file matches {part!r}")
            files.extend(found)
    return files


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if bool(INPUT.value) == bool(CAPTIONS.value):
        raise app.UsageError("give either --input (tar shards) or --images and --captions")
    if INPUT.value:
        jobs = convert.webdataset_jobs(expand(INPUT.value))
    else:
        if not IMAGES.value:
            raise app.UsageError("--captions needs --images (the folder its paths are under)")
        jobs = convert.folder_jobs(IMAGES.value, CAPTIONS.value, SHARD_SIZE.value,
                                   IMAGE_COLUMN.value, CAPTION_COLUMN.value, REGION_COLUMN.value)
    s = convert.convert(jobs, OUTPUT.value, WORKERS.value, MAX_SIZE.value)
    print(f"{s['written']} records in {s['shards']} shards under {OUTPUT.value} "
          f"({s['resumed']} shards already done)")
    for reason, n in s["skipped"].items():
        if n:
            print(f"  skipped {n:6d} {reason}")
    for line in s["examples"][:10]:
        print(f"    e.g. {line}")
    print(f"train on it with: data.sources.NAME = source(path='{os.path.join(OUTPUT.value, '*.array_record')}')")


if __name__ == "__main__":
    runtime.run(main, "launch.convert")
