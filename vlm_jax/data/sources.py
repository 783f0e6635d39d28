"""Where records come from: built-in datasets, our ArrayRecord shards, TFDS array_record datasets
and (for evaluation) image-folder trees `root/<class>/*.jpg` and CLIP_benchmark's WebDataset
layout (`wds_<name>/<split>/N.tar`).

`open_source(cfg, data_dir)` gives a random-access Grain data source plus a `Parse` that turns one
of its records into {'image': encoded bytes or uint8 array, 'captions': [str], 'label': int,
'negative_captions': [str]}, or into a skip marker {'skipped': reason} for a record that cannot
be used. Negative captions (false of the image, e.g. its captions with two attributes swapped)
are optional: ITM's text negatives read them (`itm.text_negatives`). So are `regions` (boxes
with descriptions, data/regions.py): checked against the image's size, a record with a
malformed one is skipped (or, strict, an error naming it), and the example gets
'regions': [(box, caption)]. And `gray_captions` (captions that name no colour, true of
the image in grayscale), for `data.grayscale` and `data.hue_shift`.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import tarfile

import grain
import numpy as np

from vlm_jax import config as config_lib
from vlm_jax.data import builtin, images, records
from vlm_jax.data.regions import RegionError, check as check_regions

# unreadable record | no image | no usable caption | malformed regions (data/regions.py)
SKIP_REASONS = ("record", "image", "caption", "region")


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
    label_key: str = "label"
    need_captions: bool = True      # False: classification sets, whose records have none
    negative_caption_key: str = "negative_captions"
    region_key: str = "regions"
    gray_caption_key: str = "gray_captions"
    # Reading records [offset, offset + span) of the files (a held-out split's side; 0: all).
    offset: int = 0
    span: int = 0

    def where(self, index: int) -> str:
        starts = np.cumsum((0,) + self.counts)
        index = self.offset + index % self.span if self.span else index % int(starts[-1])
        f = int(np.searchsorted(starts, index, side="right") - 1)
        if self.counts[f] == 1:         # a file per record (an image folder)
            return self.files[f]
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
        captions = _captions(_get(record, self.caption_key)) if self.caption_key else []
        if not captions and self.need_captions:
            return self._skip("caption",
                              f"{self.ref(index)} has no non-empty '{self.caption_key}'")
        label = _get(record, self.label_key) if self.label_key else None
        negatives = (_captions(_get(record, self.negative_caption_key))
                     if self.negative_caption_key else [])
        out = {"image": image, "captions": captions, "negative_captions": negatives,
               "label": -1 if label is None else int(label), "where": self.ref(index)}
        if self.gray_caption_key:
            out["gray_captions"] = _captions(_get(record, self.gray_caption_key))
        regions = _get(record, self.region_key) if self.region_key else None
        if regions is not None:
            try:
                width, height = images.open_image(image).size     # the header only
                out["regions"] = check_regions(regions, width, height, self.ref(index))
            except RegionError as e:
                return self._skip("region", str(e))
            except Exception as e:  # an unreadable image: PIL's several error types
                return self._skip("image", f"undecodable image in {self.ref(index)}: "
                                  f"{type(e).__name__}: {e}")
        return out

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


def open_source(src, data_dir: str | None, strict: bool = False, split: str | None = None,
                need_captions: bool = True):
    """(grain data source, Parse for its records, a short description). `src` is a
    `data.sources` or an `eval.datasets` entry; the latter names its label feature. With a
    `holdout` share, a source reads the records before its held-out tail, an eval entry the
    tail."""
    ds, parse, where = _open(src, data_dir, strict, split, need_captions)
    start, stop = part(src, len(ds))
    if (start, stop) == (0, len(ds)):
        return ds, parse, where
    return (Part(ds, start, stop), dataclasses.replace(parse, offset=start, span=stop - start),
            f"{where} records [{start}, {stop})")


def part(src, n: int) -> tuple[int, int]:
    """[start, stop) of the n records `src` reads: all, or either side of its held-out tail."""
    k = config_lib.held_out(n, src.get("holdout", 0.0), src.get("holdout_max", 0))
    if not k:
        return 0, n
    if k >= n:
        raise ValueError(f"{src.path}: a holdout of {src.holdout} keeps all {n} records out of "
                         "training")
    return (n - k, n) if "train_split" in src else (0, n - k)


class Part:
    """Records [start, stop) of a random-access source."""

    def __init__(self, ds, start: int, stop: int):
        self.ds, self.start, self.stop = ds, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.ds[self.start + index % len(self)]


def _open(src, data_dir, strict, split, need_captions):
    split = split or src.split
    keys = dict(image_key=src.image_key, caption_key=src.caption_key, strict=strict,
                label_key=src.get("label_key", "label"), need_captions=need_captions,
                negative_caption_key=src.get("negative_caption_key", "negative_captions"),
                region_key=src.get("region_key", "regions"),
                gray_caption_key=src.get("gray_caption_key", "gray_captions"))
    if src.kind == "builtin":
        path = builtin.split_path(src.path, split, data_dir)
        ds = grain.sources.ArrayRecordDataSource([path])
        return ds, Parse((path,), (len(ds),), strict=strict, need_captions=need_captions), path
    if src.kind == "array_record":
        files = expand_paths(src.path)
        where = files[0] if len(files) == 1 else f"{len(files)} files {src.path}"
        ds = grain.sources.ArrayRecordDataSource(files)
        return ds, Parse(tuple(files), record_counts(files), **keys), where
    if src.kind == "tfds":
        ds, where = _tfds(src, data_dir, split)
        return ds, Parse((where,), (len(ds),), **keys), where
    if src.kind == "folder":
        ds = ImageFolder(os.path.expanduser(src.path))
        return ds, Parse(ds.files, (1,) * len(ds), "image", "", strict, "label",
                         need_captions=False), f"{src.path} ({len(ds.classes)} classes)"
    if src.kind == "wds":
        ds = WebDatasetSplit(os.path.expanduser(src.path), split)
        return ds, Parse(ds.tars, ds.counts, "image", "captions" if ds.retrieval else "",
                         strict, "" if ds.retrieval else "label",
                         need_captions=ds.retrieval), f"{src.path} [{split}]"
    raise ValueError(f"unknown source kind {src.kind!r}")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolder:
    """`root/<class>/<image>` (the ImageNet validation layout) as a random-access source: the
    classes are the sub-folders in sorted order, label = position; files in sorted order. A
    record is {'image': the file's bytes, 'label'}; an unreadable file gives no image (skipped,
    counted, named by Parse)."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist")
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not self.classes:
            raise ValueError(f"image folder {root!r} has no class sub-folders (root/<class>/*.jpg)")
        files, labels = [], []
        for label, name in enumerate(self.classes):
            found = sorted(f for f in os.listdir(os.path.join(root, name))
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            files += [os.path.join(root, name, f) for f in found]
            labels += [label] * len(found)
        if not files:
            raise ValueError(f"image folder {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.files, self.labels = tuple(files), np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        index %= len(self.files)
        try:
            with open(self.files[index], "rb") as f:
                image = f.read()
        except OSError:
            image = None
        return {"image": image, "label": int(self.labels[index])}


WDS_IMAGES = (".webp", ".png", ".jpg", ".jpeg")


class WebDatasetSplit:
    """One split of CLIP_benchmark's WebDataset layout, random access: ROOT/SPLIT/0.tar ..
    (nshards.txt of them), each example an image (.webp, .png, .jpg, .jpeg) with a class id
    (.cls) or, where dataset_type.txt says retrieval, captions (.txt, one per line). The
    tars are indexed once (member offsets); a record is {'image', 'label'} or {'image',
    'captions'}."""

    def __init__(self, root: str, split: str):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"WebDataset split {folder!r} does not exist")
        count = os.path.join(folder, "nshards.txt")
        if os.path.isfile(count):
            self.tars = tuple(os.path.join(folder, f"{i}.tar")
                              for i in range(int(open(count).read().strip())))
        else:
            self.tars = tuple(sorted(glob.glob(os.path.join(folder, "*.tar")),
                                     key=lambda f: (len(f), f)))
        if not self.tars:
            raise ValueError(f"WebDataset split {folder!r} holds no .tar shards")
        self.examples, counts = [], []
        for tar in self.tars:
            found = self._index(tar)
            self.examples += found
            counts.append(len(found))
        self.counts = tuple(counts)
        # dataset_type.txt (beside the split or in it) says the task; without it, captions and
        # no class ids mean retrieval.
        kind = next((f for f in (os.path.join(root, "dataset_type.txt"),
                                 os.path.join(folder, "dataset_type.txt")) if os.path.isfile(f)),
                    None)
        first = self.examples[0][1] if self.examples else {}
        self.retrieval = (open(kind).read().strip().lower() == "retrieval" if kind else
                          ".txt" in first and ".cls" not in first)

    def _index(self, path: str) -> list[tuple[str, dict]]:
        """[(tar, {extension: (offset, size)})] per example key, in the tar's order."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WebDataset shard {path!r} does not exist")
        groups: dict[str, dict] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if m.isfile():
                        key, dot, ext = m.name.partition(".")
                        groups.setdefault(key, {})["." + ext.lower()] = (m.offset_data, m.size)
        except tarfile.TarError as e:
            raise ValueError(f"WebDataset shard {path}: not a readable tar ({e})") from None
        return [(path, g) for g in groups.values()]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int, with_image: bool = True) -> dict:
        tar, members = self.examples[index % len(self.examples)]
        with open(tar, "rb") as f:
            def read(ext):
                offset, size = members[ext]
                f.seek(offset)
                return f.read(size)
            out = {"image": next((read(e) for e in WDS_IMAGES if e in members), None)
                   if with_image else None}
            if self.retrieval:
                text = read(".txt").decode("utf-8") if ".txt" in members else ""
                return {**out, "captions": [t for t in text.splitlines() if t.strip()]}
            label = int(read(".cls").decode().strip()) if ".cls" in members else -1
        return {**out, "label": label}

    def texts(self) -> tuple[list[list[str]], np.ndarray]:
        """Every example's captions and label, no image read."""
        rows = [self.__getitem__(i, with_image=False) for i in range(len(self))]
        return ([r.get("captions", []) for r in rows],
                np.array([r.get("label", -1) for r in rows], np.int32))


def record_counts(files) -> tuple[int, ...]:
    # ArrayRecordDataSource concatenates files in order; per-file counts let errors name the file.
    from array_record.python.array_record_module import ArrayRecordReader
    counts = []
    for f in files:
        r = ArrayRecordReader(f)
        counts.append(r.num_records())
        r.close()
    return tuple(counts)


def tfds_builder(src, data_dir):
    """The prepared TFDS builder `src.path` names (a folder, or a name under data_dir)."""
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
    return builder


def _tfds(src, data_dir, split):
    path, builder = src.path, tfds_builder(src, data_dir)
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format) or "tfrecord"
    if fmt != "array_record":
        raise ValueError(f"TFDS dataset {path!r} is stored as {fmt}; only the array_record "
                         f"format is readable without TensorFlow")
    if split not in builder.info.splits:
        raise ValueError(f"TFDS dataset {path!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}")
    return builder.as_data_source(split=split), f"{builder.info.full_name}[{split}]"
