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
    return write_raw(path, (msgpack.packb(ex, use_bin_type=True) for ex in examples))


def write_raw(path: str, packed: Iterable[bytes]) -> int:
    """Writes encoded records to one ArrayRecord file, atomically (temporary name, then rename)."""
    # group_size:1 keeps every record individually seekable, which global shuffling needs.
    writer = ArrayRecordWriter(path + ".tmp", "group_size:1")
    n = 0
    try:
        for rec in packed:
            writer.write(rec)
            n += 1
    finally:
        writer.close()
    os.replace(path + ".tmp", path)
    return n


def unpack(record: bytes, where) -> dict:
    """Decodes one record; `where` ("record #i of FILE") names it in the error."""
    try:
        ex = msgpack.unpackb(record, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"corrupt {where}: {type(e).__name__}: {e}") from None
    if not isinstance(ex, dict):
        raise ValueError(f"corrupt {where}: expected a map, got {type(ex).__name__}")
    return ex


def exists(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0
