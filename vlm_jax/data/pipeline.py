"""Grain pipelines: sources -> parsed, augmented, tokenized batches -> global arrays on a mesh.

Training, per source: parse (named errors or skip markers) -> seeded global shuffle, reshuffled
every epoch -> repeat -> crop/flip/caption/tokenize with the source's transforms. Several sources
are mixed by weight (a fixed interleave, exact in the long run); then this process takes its
slice, and batches are filled skipping bad examples, counting them by reason. Every random choice
is seeded by the example's position in the stream and the iterator's state is a position, so a
restored iterator (workers or not) continues with exactly the batches an uninterrupted run sees.
Images stay uint8 until they reach the device (4x less to transfer); the model rescales them.
"""
from __future__ import annotations

import functools
import math
import os

import grain
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from vlm_jax import config as config_lib
from vlm_jax.data import images, sources
from vlm_jax.data.sources import SKIP_REASONS, BadRecordError
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.data.transforms import Augment, EvalView

SKIP_KEYS = tuple(f"skipped_{r}" for r in SKIP_REASONS)
SKIP_METRICS = tuple(f"data/{k}" for k in SKIP_KEYS)   # per log window, this process's
# Consecutive skipped examples that mean the data, not a few records, is broken.
MAX_CONSECUTIVE_SKIPS = 1000


def source_configs(config) -> dict:
    """data.sources, or the built-in data.name as the only source."""
    if len(config.data.sources):
        return dict(config.data.sources.items())
    return {config.data.name: config_lib.source(kind="builtin", path=config.data.name)}


def parsed(src, data_dir: str | None, strict: bool = False, split: str | None = None,
           need_captions: bool = True):
    """(MapDataset of parsed examples / skip markers, description)."""
    ds, parse, where = sources.open_source(src, data_dir, strict, split, need_captions)
    return grain.MapDataset.source(ds).map_with_index(parse), where


def held_out(config) -> dict:
    """{source name: its records, the share and cap asked for, and the [start, stop) ranges
    trained on and held out}, for the sources that hold records out of training."""
    out = {}
    for name, src in sorted(source_configs(config).items()):
        if not src.holdout:
            continue
        whole = config_lib.source(**{**src.to_dict(), "holdout": 0.0})
        n = len(sources.open_source(whole, config.data_dir or None, need_captions=False)[0])
        train = sources.part(src, n)
        out[name] = {"path": src.path, "records": n, "holdout": src.holdout,
                     "holdout_max": src.holdout_max, "train": list(train),
                     "held_out": [train[1], n]}
    return out


def _transform(config, src, tokenizer: Tokenizer) -> Augment:
    d = config.data
    pick = functools.partial(config_lib.transform, config, src)
    return Augment(tokenizer, config.tokenizer.max_len, d.image_size, pick("crop"),
                   pick("crop_scale_min"), pick("crop_padding"), pick("flip"), d.strict,
                   scene_label=config.itm.groups == "scene",
                   negatives=config_lib.text_negatives(config),
                   regions=config_lib.grounding_bins(config) > 0,
                   grounding_bins=config_lib.grounding_bins(config),
                   vocab_size=tokenizer.vocab_size,
                   local_scale=tuple(config.distill.local_scale)
                   if config_lib.local_views(config) else (),
                   grayscale=pick("grayscale"), hue_shift=pick("hue_shift"),
                   hue_degrees=tuple(map(tuple, pick("hue_shift_degrees"))),
                   mark_colourless=config_lib.colourless(config))


def train_dataset(config, tokenizer: Tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None) -> tuple[grain.IterDataset, int]:
    """(an endless IterDataset of this process's batches, number of train records)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.batch_size % pc:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {pc} processes")
    data_dir = config.data_dir or None
    mixed, weights, total = [], [], 0
    for k, (name, src) in enumerate(sorted(source_configs(config).items())):
        ds, where = parsed(src, data_dir, config.data.strict)
        if not len(ds):
            raise ValueError(f"source {name!r} ({where}) has no records")
        total += len(ds)
        mixed.append(ds.seed(config.seed + k).shuffle().repeat()
                     .random_map(_transform(config, src, tokenizer)))
        weights.append(src.weight)
        logging.info("data source %r: %d records from %s, weight %g", name, len(ds), where,
                     src.weight)
    ds = mixed[0] if len(mixed) == 1 else grain.MapDataset.mix(mixed, weights)
    local = config.batch_size // pc
    it = ds[pi::pc].to_iter_dataset(grain.ReadOptions(
        num_threads=config.data.num_threads, prefetch_buffer_size=config.data.prefetch * local))
    it = SkipBatch(it, local)
    if config.data.num_workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers,
                                                         per_worker_buffer_size=config.data.prefetch))
    else:   # batches are assembled in a background thread, not in the train loop's
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=config.data.prefetch)
    return it, total


class SkipBatch(grain.IterDataset):
    """Batches examples, leaving out skip markers and counting them per reason in the batch
    (`skipped_<reason>`, int32 scalars). The state is the parent's: counts are per batch."""

    def __init__(self, parent: grain.IterDataset, batch_size: int):
        super().__init__(parent)
        self.batch_size = batch_size

    def __iter__(self):
        return _SkipBatchIterator(self._parent.__iter__(), self.batch_size)


class _SkipBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int):
        super().__init__(parent)
        self.batch_size = batch_size

    def __next__(self) -> dict:
        rows, skipped, run = [], dict.fromkeys(SKIP_REASONS, 0), 0
        while len(rows) < self.batch_size:
            ex = next(self._parent)
            if "skipped" not in ex:
                rows.append(ex)
                run = 0
                continue
            skipped[ex["skipped"]] += 1
            run += 1
            if skipped[ex["skipped"]] == 1:
                logging.log_every_n_seconds(logging.WARNING, "skipping: %s", 60, ex["why"])
            if run >= MAX_CONSECUTIVE_SKIPS:
                raise BadRecordError(f"{run} consecutive records skipped, the last: {ex['why']}")
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        batch.update({f"skipped_{r}": np.int32(n) for r, n in skipped.items()})
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


def split_skips(batch: dict) -> tuple[dict, dict]:
    """(the model's arrays, {'data/skipped_<reason>': count})."""
    counts = {f"data/{k}": int(batch[k]) for k in SKIP_KEYS if k in batch}
    return {k: v for k, v in batch.items() if k not in SKIP_KEYS}, counts


def eval_batches(src, data_dir: str | None, view: images.View, batch_size: int, *,
                 process_index: int | None = None,
                 process_count: int | None = None, num_threads: int = 2):
    """(IterDataset of this process's eval batches, number of examples).

    The index space is padded up to a multiple of `batch_size` (the global batch) and split
    over processes by stride, so every example appears exactly once over all processes and
    batches; rows carry `index` (position in the source) and `valid` (False on padding and on
    unreadable examples)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if batch_size % pc:
        raise ValueError(f"eval batch {batch_size} is not divisible by {pc} processes")
    examples, _ = parsed(src, data_dir, need_captions=False)
    n = len(examples)
    padded = math.ceil(n / batch_size) * batch_size
    ds = grain.MapDataset.range(padded)[pi::pc].map(EvalView(examples, n, view))
    it = ds.batch(batch_size // pc).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
    return it, n


def read_texts(src, data_dir: str | None) -> tuple[list[list[str]], np.ndarray]:
    """Every example's captions and label, without decoding an image (unusable ones: no
    captions, label -1). An image folder's labels are its file list's: no file is read; a
    WebDataset split reads only its labels and captions."""
    if src.kind == "folder":
        labels = sources.ImageFolder(os.path.expanduser(src.path)).labels
        return [[] for _ in labels], labels
    if src.kind == "wds":
        return sources.WebDatasetSplit(os.path.expanduser(src.path), src.split).texts()
    examples, _ = parsed(src, data_dir, need_captions=False)
    caps, labels = [], []
    for i in range(len(examples)):
        ex = examples[i]
        caps.append(ex.get("captions", []))
        labels.append(ex.get("label", -1))
    return caps, np.array(labels, np.int32)


def to_global(batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows -> global jax.Arrays split over the mesh's batch axes (skip counts,
    which are host-side bookkeeping, are left out)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items() if k not in SKIP_KEYS}


def builtin_source(name: str, split: str = "test"):
    return config_lib.source(kind="builtin", path=name, split=split)


def load_split(name: str, split: str, data_dir: str | None, image_size: int) -> dict:
    """A whole (small) built-in split in host memory: images uint8 [N, S, S, 3], captions, labels."""
    examples, _ = parsed(builtin_source(name, split), data_dir)
    exs = [examples[i] for i in range(len(examples))]
    return {"image": np.stack([images.render(e["image"], image_size) for e in exs]),
            "captions": [e["captions"] for e in exs],
            "label": np.array([e["label"] for e in exs], np.int32)}
