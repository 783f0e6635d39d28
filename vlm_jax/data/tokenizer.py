"""Tokenizers. Byte-level by default: no vocabulary file, nothing to download.

Any object with `vocab_size`, `pad_id`, `encode(str) -> list[int]` and `decode(ids) -> str` plugs
in (a SentencePiece or HF `tokenizers` file wraps in a few lines).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past four specials: pad 0, bos 1, eos 2, mask 3."""
    pad_id, bos_id, eos_id, mask_id = 0, 1, 2, 3
    offset = 4
    vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *(b + self.offset for b in text.encode("utf-8")), self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


def tokenize(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, max_len] int32 ids and bool mask (True on real tokens). Long texts keep their last
    token (EOS), so the pooled token is the same kind of token for every caption."""
    ids = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, text in enumerate(texts):
        t = tokenizer.encode(text)
        if len(t) > max_len:
            t = t[: max_len - 1] + t[-1:]
        ids[i, : len(t)] = t
        mask[i, : len(t)] = True
    return ids, mask


def build(config) -> Tokenizer:
    if config.tokenizer.name == "bytes":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer {config.tokenizer.name!r}")
