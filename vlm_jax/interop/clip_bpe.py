"""CLIP's byte-level BPE (OpenAI CLIP, OpenCLIP) as a Hugging Face tokenizer.json, built from
the merges file open_clip ships (`bpe_simple_vocab_16e6.txt.gz`).

The vocabulary is open_clip's SimpleTokenizer's: the 256 byte symbols, the same with the
end-of-word mark `</w>`, the first 48,894 merges, then `<start_of_text>` (49406) and
`<end_of_text>` (49407). Words are split by CLIP's pattern and merged by rank; the text cleaning
(ftfy, HTML entities, whitespace, lower case) is `tokenizer.clean = "lower"`.
"""
from __future__ import annotations

import gzip
import importlib.util
import os

VOCAB_SIZE = 49408
SPECIALS = ("<start_of_text>", "<end_of_text>")
# CLIP's word pattern (the contractions in either case, as its re.IGNORECASE has them).
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def shipped_merges() -> str | None:
    """The merges file of the installed open_clip package (found without importing it), or
    None."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], MERGES_FILE)
    return path if os.path.isfile(path) else None


def build(merges_path: str):
    """A `tokenizers.Tokenizer` equal to open_clip's SimpleTokenizer on cleaned text."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers
    opener = gzip.open if merges_path.endswith(".gz") else open
    with opener(merges_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    if len(merges) != VOCAB_SIZE - 512 - len(SPECIALS) or any(len(m) != 2 for m in merges):
        raise ValueError(f"{merges_path}: not CLIP's merges file ({len(merges)} merges read)")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIALS)
    tok = tokenizers.Tokenizer(models.BPE(
        vocab={v: i for i, v in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>",
        continuing_subword_prefix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # Bytes back from their symbols, then each end-of-word mark a space (open_clip's decode).
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " "),
                                     decoders.Strip(" ", 0, 1)])
    tok.add_special_tokens(list(SPECIALS))
    return tok


def write(merges_path: str, out_path: str) -> str:
    """Writes the tokenizer.json built from `merges_path`; returns its path."""
    build(merges_path).save(out_path)
    return out_path
