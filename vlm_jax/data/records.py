"""Examples stored as msgpack records in ArrayRecord files (random access, Grain-readable)."""
from __future__ import annotations

import io
import os
from typing import Iterable

import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3], resized (bilinear) to size x size if given."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.uint8)


def write(path: str, examples: Iterable[dict]) -> int:
    """Writes msgpack-encoded examples to one ArrayRecord file; returns how many."""
    # group_size:1 keeps every record individually seekable, which global shuffling needs.
    writer = ArrayRecordWriter(path, "group_size:1")
    n = 0
    try:
        for ex in examples:
            writer.write(msgpack.packb(ex, use_bin_type=True))
            n += 1
    finally:
        writer.close()
    return n


def unpack(record: bytes, where: str) -> dict:
    """Decodes one record, naming it in the error if it is corrupt."""
    try:
        ex = msgpack.unpackb(record, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"corrupt record {where}: {type(e).__name__}: {e}") from None
    if not isinstance(ex, dict):
        raise ValueError(f"corrupt record {where}: expected a map, got {type(ex).__name__}")
    return ex


def exists(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0
