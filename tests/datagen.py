"""Small real inputs for data tests: JPEGs written with PIL, record shards, WebDataset tars."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image


def jpeg(seed: int, size=(48, 40), quality: int = 90) -> bytes:
    """A real JPEG: a smooth random colour field (so it compresses like a photo)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def write_records(path: str, examples: list) -> str:
    """Examples (dicts, or raw bytes for a corrupt record) -> one ArrayRecord file."""
    from array_record.python.array_record_module import ArrayRecordWriter
    import msgpack
    w = ArrayRecordWriter(path, "group_size:1")
    for ex in examples:
        w.write(ex if isinstance(ex, bytes) else msgpack.packb(ex, use_bin_type=True))
    w.close()
    return path


def good_examples(prefix: str, n: int, seed: int = 0, size=(48, 40)) -> list[dict]:
    return [{"image": jpeg(seed + i, size), "captions": [f"{prefix} {i}", f"{prefix} item {i}"],
             "label": i} for i in range(n)]


def webdataset_tar(path: str, members: dict[str, bytes]) -> str:
    """{'key.ext': bytes} -> a tar shard (insertion order kept, as img2dataset writes them)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def caption_json(text: str) -> bytes:
    return json.dumps({"caption": text, "url": "http://example.invalid/x.jpg"}).encode()



def clip_benchmark_set(root, examples: list[dict], classnames=(), templates=(), shards: int = 2,
                       split: str = "test") -> str:
    """CLIP_benchmark's webdataset layout of `examples` ({'image': PNG bytes, 'label'} or
    {'image', 'captions'}): ROOT/classnames.txt, zeroshot_classification_templates.txt and
    SPLIT/nshards.txt + 0.tar .. (shards-1).tar, keys s0000000 .. in order."""
    import os
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for name, lines in (("classnames.txt", classnames),
                        ("zeroshot_classification_templates.txt", templates)):
        if lines:
            with open(os.path.join(root, name), "w") as f:
                f.write("\n".join(lines) + "\n")
    per = -(-len(examples) // shards)
    for k in range(shards):
        members = {}
        for i, ex in enumerate(examples[k * per:(k + 1) * per], k * per):
            members[f"s{i:07d}.png"] = ex["image"]
            if "captions" in ex:
                members[f"s{i:07d}.txt"] = "\n".join(ex["captions"]).encode()
            else:
                members[f"s{i:07d}.cls"] = str(ex["label"]).encode()
        webdataset_tar(os.path.join(root, split, f"{k}.tar"), members)
    with open(os.path.join(root, split, "nshards.txt"), "w") as f:
        f.write(f"{shards}\n")
    return str(root)
