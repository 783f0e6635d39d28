"""Where records come from: built-in datasets, our ArrayRecord shards, TFDS array_record datasets.

`open_source(cfg, data_dir)` gives a random-access Grain data source plus a `Parse` that turns one
of its records into {'image': encoded bytes or uint8 array, 'captions': [str], 'label': int}, or
into a skip marker {'skipped': reason} for a record that cannot be used.
"""
from __future__ import annotations

import dataclasses
import glob
import os

import grain
import numpy as np

from vlm_jax.data import builtin, records

SKIP_REASONS = ("record", "image", "caption")   # unreadable record | no image | no usable caption


class BadRecordError(ValueError):
    """A record that cannot be used, in strict mode."""


@dataclasses.dataclass(frozen=True)
class Parse:
    """Record (msgpack bytes or a TFDS dict) -> example or skip marker; `strict` raises instead,
    naming the file and the record's index in it. `files`/`counts` describe how the source
    concatenates its files (Grain may pass indices past the end: they wrap around)."""
    files: tuple[str, ...]
    counts: tuple[int, ...]
    image_key: str = "image"
    caption_key: str = "captions"
    strict: bool = False

    def where(self, index: int) -> str:
        starts = np.cumsum((0,) + self.counts)
        index %= int(starts[-1])
        f = int(np.searchsorted(starts, index, side="right") - 1)
        return f"record #{index - int(starts[f])} of {self.files[f]}"

    def ref(self, index: int) -> "RecordRef":
        return RecordRef(self, index)

    def __call__(self, index: int, record) -> dict:
        if isinstance(record, (bytes, bytearray)):
            try:
                record = records.unpack(record, self.ref(index))   # named only on error
            except ValueError as e:
                return self._skip("record", str(e))
        image = _get(record, self.image_key)
        if image is None or (isinstance(image, (bytes, np.ndarray)) and len(image) == 0):
            return self._skip("image", f"{self.ref(index)} has no '{self.image_key}'")
        captions = _captions(_get(record, self.caption_key))
        if not captions:
            return self._skip("caption",
                              f"{self.ref(index)} has no non-empty '{self.caption_key}'")
        return {"image": image, "captions": captions, "label": int(record.get("label", -1)),
                "where": self.ref(index)}

    def _skip(self, reason: str, message: str) -> dict:
        if self.strict:
            raise BadRecordError(f"{message} (data.strict=True; set it False to skip and count)")
        return {"skipped": reason, "why": message}


@dataclasses.dataclass(frozen=True)
class RecordRef:
    """Names a record ("record #i of FILE") when printed; cheap to carry until an error needs it."""
    parse: Parse
    index: int

    def __str__(self) -> str:
        return self.parse.where(self.index)


def _get(record: dict, key: str):
    """record[key], where 'a/b' reads a nested feature (TFDS FeaturesDict)."""
    for part in key.split("/"):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def _captions(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = [value]
    out = []
    for c in value:
        c = c.decode("utf-8", errors="replace") if isinstance(c, (bytes, np.bytes_)) else str(c)
        if c.strip():
            out.append(c.strip())
    return out


def expand_paths(pattern: str) -> list[str]:
    """Comma-separated files or globs -> sorted existing files; a pattern matching nothing is
    an error naming it."""
    files = []
    for part in (p.strip() for p in pattern.split(",") if p.strip()):
        found = sorted(glob.glob(os.path.expanduser(part)))
        if not found:
            raise FileNotFoundError(f"no files match {part!r}")
        files.extend(found)
    return files


def open_source(src, data_dir: str | None, strict: bool = False, split: str | None = None):
    """(grain data source, Parse for its records, a short description)."""
    split = split or src.split
    if src.kind == "builtin":
        path = builtin.split_path(src.path, split, data_dir)
        ds = grain.sources.ArrayRecordDataSource([path])
        return ds, Parse((path,), (len(ds),), strict=strict), path
    if src.kind == "array_record":
        files = expand_paths(src.path)
        where = files[0] if len(files) == 1 else f"{len(files)} files {src.path}"
        ds = grain.sources.ArrayRecordDataSource(files)
        parse = Parse(tuple(files), record_counts(files), src.image_key, src.caption_key, strict)
        return ds, parse, where
    if src.kind == "tfds":
        return _tfds(src, data_dir, split, strict)
    raise ValueError(f"unknown source kind {src.kind!r}")


def record_counts(files) -> tuple[int, ...]:
    # ArrayRecordDataSource concatenates files in order; per-file counts let errors name the file.
    from array_record.python.array_record_module import ArrayRecordReader
    counts = []
    for f in files:
        r = ArrayRecordReader(f)
        counts.append(r.num_records())
        r.close()
    return tuple(counts)


def _tfds(src, data_dir, split, strict):
    import tensorflow_datasets as tfds
    path = os.path.expanduser(src.path)
    if os.path.isdir(path):
        builder = tfds.builder_from_directory(path)
    else:
        builder = tfds.builder(path, data_dir=data_dir or None, file_format="array_record")
        if not os.path.isdir(str(builder.data_dir)):
            raise FileNotFoundError(
                f"TFDS dataset {path!r} is not prepared in {builder.data_dir}; prepare it with "
                f"`tfds build {path} --file_format=array_record` or give its folder as the path")
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format) or "tfrecord"
    if fmt != "array_record":
        raise ValueError(f"TFDS dataset {path!r} is stored as {fmt}; only the array_record "
                         f"format is readable without TensorFlow")
    if split not in builder.info.splits:
        raise ValueError(f"TFDS dataset {path!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}")
    ds = builder.as_data_source(split=split)
    where = f"{builder.info.full_name}[{split}]"
    return ds, Parse((where,), (len(ds),), src.image_key, src.caption_key, strict), where
