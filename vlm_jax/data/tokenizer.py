"""Tokenizers: byte-level (no file, the default), SentencePiece `.model` and Hugging Face
`tokenizers` JSON, each loaded from a local path, with the text cleaning the model was trained
with (`tokenizer.clean`: open_clip's cleaners, big_vision's canonical form).

Every tokenizer's `encode` returns the text's ids only; `tokenize` adds the specials and does the
fixed-length layout, the same for every kind:

  [BOS] text ids [EOS] PAD PAD ...      (BOS/EOS each when the config asks and the vocab has one)

A text too long for `max_len` loses ids from its end but keeps its EOS, so the token a text tower
pools (the last real one) is the same kind of token for every caption. Padding uses the
tokenizer's pad id (0 when it has none); the mask, not the id, is what marks padding.
"""
from __future__ import annotations

import html
import os
import string
from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    mask_id: int | None
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    add_eos: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past four specials: pad 0, bos 1, eos 2, mask 3."""
    pad_id, bos_id, eos_id, mask_id = 0, 1, 2, 3
    offset = 4
    vocab_size = 256 + offset

    def __init__(self, add_bos: bool = True, add_eos: bool = True):
        self.add_bos, self.add_eos = add_bos, add_eos

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece `.model` file; its own bos/eos/pad ids (absent ones are -1 there)."""

    def __init__(self, path: str, add_bos: bool = True, add_eos: bool = True):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = _id_or_none(self.sp.bos_id())
        self.eos_id = _id_or_none(self.sp.eos_id())
        self.pad_id = _id_or_none(self.sp.pad_id()) or 0
        unk = self.sp.unk_id()
        self.mask_id = next((i for name in _HF_SPECIALS["mask"]
                             if (i := self.sp.piece_to_id(name)) != unk), None)
        self.add_bos, self.add_eos = add_bos, add_eos

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


# Special tokens are found by the names the common tokenizer files use.
_HF_SPECIALS = {
    "bos": ("<s>", "<|startoftext|>", "<start_of_text>", "<bos>", "[CLS]", "<BOS>"),
    "eos": ("</s>", "<|endoftext|>", "<end_of_text>", "<eos>", "[SEP]", "<EOS>"),
    "pad": ("<pad>", "[PAD]", "<PAD>"),
    "mask": ("[MASK]", "<mask>", "<MASK>"),   # MLM's mask token, when the vocab has one
}


class HFTokenizer:
    """A Hugging Face `tokenizers` JSON file (tokenizer.json). Its own post-processor is not
    used: specials are added by `tokenize`, like every other kind."""

    def __init__(self, path: str, add_bos: bool = True, add_eos: bool = True):
        import tokenizers
        self.tok = tokenizers.Tokenizer.from_file(path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        find = lambda kind: next((i for name in _HF_SPECIALS[kind]
                                  if (i := self.tok.token_to_id(name)) is not None), None)
        self.bos_id, self.eos_id = find("bos"), find("eos")
        self.pad_id = find("pad") or 0
        self.mask_id = find("mask")
        self.add_bos, self.add_eos = add_bos, add_eos

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _basic_clean(text: str) -> str:
    """open_clip's: mojibake and unicode fixed (ftfy), HTML entities resolved twice, stripped."""
    import ftfy
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split())


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """big_vision's canonical text (SigLIP's prompts): underscores as spaces, ASCII punctuation
    removed, lower case, whitespace collapsed."""
    return _whitespace(text.replace("_", " ").translate(_PUNCTUATION).lower())


# tokenizer.clean -> the function applied to every text before encoding (open_clip's names).
CLEANERS = {
    "none": lambda text: text,
    "lower": lambda text: _whitespace(_basic_clean(text)).lower(),      # OpenAI CLIP, OpenCLIP
    "whitespace": lambda text: _whitespace(_basic_clean(text)),
    "canonicalize": lambda text: canonicalize(_basic_clean(text)),      # SigLIP (big_vision)
}


class Configured:
    """A tokenizer as the config adjusts it: `encode` cleans the text first (tokenizer.clean),
    padding uses `pad_id` (tokenizer.pad_id) and, with `attend_padding`, the mask covers the
    padding too (SigLIP's text tower reads every position and pools the last). Every other
    attribute is the wrapped tokenizer's."""

    def __init__(self, tokenizer: Tokenizer, clean: str = "none", pad_id: int = -1,
                 attend_padding: bool = False):
        self.tokenizer, self.clean, self._fn = tokenizer, clean, CLEANERS[clean]
        self.pad_id = tokenizer.pad_id if pad_id < 0 else pad_id
        self.attend_padding = attend_padding

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(self._fn(text))


def _id_or_none(i: int) -> int | None:
    return None if i < 0 else int(i)


def tokenize(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, max_len] int32 ids and bool mask (True on real tokens), laid out as the module says."""
    head = [tokenizer.bos_id] if tokenizer.add_bos else []
    tail = [tokenizer.eos_id] if tokenizer.add_eos else []
    room = max_len - len(head) - len(tail)
    if room <= 0:
        raise ValueError(f"tokenizer.max_len={max_len} leaves no room for text after BOS/EOS")
    ids = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, text in enumerate(texts):
        t = head + tokenizer.encode(text)[:room] + tail
        if not t:
            raise ValueError(f"text #{i} {text!r} has no tokens and no BOS/EOS is added")
        ids[i, : len(t)] = t
        mask[i, : len(t)] = True
    if getattr(tokenizer, "attend_padding", False):
        mask[:] = True
    return ids, mask


KINDS = {"bytes": ByteTokenizer, "sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer}


class StandInTokenizer:
    """The ids a model is built from (vocabulary size, pad, mask, BOS, EOS) without the
    vocabulary's file: for compiling a run ahead of time (launch.compile). It encodes nothing."""
    pad_id, bos_id, eos_id, mask_id = 0, 1, 2, 3

    def __init__(self, vocab_size: int, add_bos: bool = True, add_eos: bool = True):
        self.vocab_size, self.add_bos, self.add_eos = vocab_size, add_bos, add_eos

    def encode(self, text: str) -> list[int]:
        raise ValueError("a stand-in tokenizer (tokenizer.vocab_size without tokenizer.path) "
                         "encodes no text: give tokenizer.path")

    decode = encode


def build(config, stand_in: bool = False) -> Tokenizer:
    """The tokenizer the config names; files are checked before anything else reads them. With
    `stand_in`, a file that is not at hand is replaced by a `StandInTokenizer` of
    `tokenizer.vocab_size` ids."""
    t = config.tokenizer
    if t.name not in KINDS:
        raise ValueError(f"unknown tokenizer {t.name!r}; choose one of {sorted(KINDS)}")
    if stand_in and t.name != "bytes" and not (t.path and os.path.isfile(t.path)):
        if t.vocab_size <= 0:
            raise ValueError(f"tokenizer.path {t.path!r} is not at hand: set "
                             "tokenizer.vocab_size to compile without it")
        return StandInTokenizer(t.vocab_size, t.bos, t.eos)
    if t.name == "bytes":
        tok = ByteTokenizer(t.bos, t.eos)
    else:
        if not t.path:
            raise ValueError(f"tokenizer.name={t.name!r} needs tokenizer.path (a local file)")
        if not os.path.isfile(t.path):
            raise FileNotFoundError(f"tokenizer.path {t.path!r} does not exist")
        tok = KINDS[t.name](t.path, t.bos, t.eos)
    if t.vocab_size and t.vocab_size != tok.vocab_size:
        source = "the 'bytes' tokenizer" if t.name == "bytes" else repr(t.path)
        raise ValueError(f"tokenizer.vocab_size={t.vocab_size} but {source} has "
                         f"{tok.vocab_size} ids; set it to 0 (read from the file) or match")
    for kind in ("bos", "eos"):
        if getattr(tok, f"add_{kind}") and getattr(tok, f"{kind}_id") is None:
            raise ValueError(f"tokenizer.{kind}=True but {t.path or t.name!r} has no {kind.upper()} "
                             f"token; set tokenizer.{kind}=False")
    if t.pad_id >= tok.vocab_size:
        raise ValueError(f"tokenizer.pad_id={t.pad_id} is past {t.path or t.name!r}'s "
                         f"{tok.vocab_size} ids")
    if (t.clean, t.pad_id, t.attend_padding) == ("none", -1, False):
        return tok
    return Configured(tok, t.clean, t.pad_id, t.attend_padding)
