"""Grain pipelines: records -> decoded, augmented, tokenized batches -> global arrays on a mesh.

Training: decode (named errors) -> seeded global shuffle, reshuffled every epoch -> repeat ->
this process's slice -> random crop/flip + caption sampling + tokenization -> batch. Every random
choice is seeded by the example's position in the stream, and the iterator's state is a position,
so a restored iterator continues with exactly the batches an uninterrupted run would have seen.
Images stay uint8 until they reach the device (4x less to transfer); the model rescales them.
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from vlm_jax.data import builtin, records
from vlm_jax.data.tokenizer import Tokenizer, tokenize


@dataclasses.dataclass(frozen=True)
class DecodeExample:
    """Record bytes -> {'image' uint8 [S, S, 3], 'captions', 'label'}; errors name the record."""
    where: str
    image_size: int

    def __call__(self, index: int, record: bytes) -> dict:
        where = f"#{index} of {self.where}"
        ex = records.unpack(record, where)
        try:
            image = records.decode_image(ex["image"], self.image_size)
            captions = [str(c) for c in ex["captions"]]
        except Exception as e:
            raise ValueError(f"corrupt record {where}: {type(e).__name__}: {e}") from None
        if not captions:
            raise ValueError(f"record {where} has no captions")
        return {"image": image, "captions": captions, "label": int(ex.get("label", -1))}


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random crop (pad, then crop back) and flip; samples one caption and tokenizes it."""
    tokenizer: Tokenizer
    max_len: int
    crop_padding: int = 0
    flip: bool = False

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        image = ex["image"]
        if self.crop_padding:
            p = self.crop_padding
            h, w = image.shape[:2]
            padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge")
            dy, dx = rng.integers(0, 2 * p + 1, size=2)
            image = padded[dy:dy + h, dx:dx + w]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        caption = ex["captions"][int(rng.integers(len(ex["captions"])))]
        ids, mask = tokenize(self.tokenizer, [caption], self.max_len)
        return {"image": np.ascontiguousarray(image), "tokens": ids[0], "mask": mask[0]}


def source(name: str, split: str, data_dir: str | None, image_size: int) -> grain.MapDataset:
    """A built-in split as a MapDataset of decoded examples (prepared on first use)."""
    path = builtin.split_path(name, split, data_dir)
    src = grain.sources.ArrayRecordDataSource([path])
    return grain.MapDataset.source(src).map_with_index(DecodeExample(path, image_size))


def train_dataset(config, tokenizer: Tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None) -> tuple[grain.IterDataset, int]:
    """(an endless IterDataset of this process's batches, number of train examples)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.batch_size % pc:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {pc} processes")
    d = config.data
    ds = source(d.name, "train", config.data_dir or None, d.image_size)
    n = len(ds)
    ds = (ds.seed(config.seed).shuffle().repeat()[pi::pc]
          .random_map(Augment(tokenizer, config.tokenizer.max_len, d.crop_padding, d.flip))
          .batch(config.batch_size // pc, drop_remainder=True))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.num_threads,
                                              prefetch_buffer_size=d.prefetch))
    if d.num_workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
    return it, n


def to_global(batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows -> global jax.Arrays split over the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def load_split(name: str, split: str, data_dir: str | None, image_size: int) -> dict:
    """A whole (small) split in host memory: images uint8 [N, S, S, 3], captions, labels."""
    ds = source(name, split, data_dir, image_size)
    exs = [ds[i] for i in range(len(ds))]
    return {"image": np.stack([e["image"] for e in exs]),
            "captions": [e["captions"] for e in exs],
            "label": np.array([e["label"] for e in exs], np.int32)}
