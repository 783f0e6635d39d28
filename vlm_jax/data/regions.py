"""Box-annotated regions of a record, for grounding objectives (LocCa's referring expressions and
grounded captions).

A record may carry `regions`: a list of {'box': [x0, y0, x1, y1], 'caption': str}, the box in
pixels of the stored image (x to the right, y down, x0 < x1 and y0 < y1, inside the image) and
the caption a description of what the box holds. `check` validates them against the image's
size, naming the record and the region; `to_view` maps a box into a training view's crop,
normalised to [0, 1].
"""
from __future__ import annotations

import numpy as np


class RegionError(ValueError):
    """A record's regions are malformed."""


def check(value, width: int, height: int, where) -> list[tuple[np.ndarray, str]]:
    """[(box float32 [4], caption)] of a record's `regions`; RegionError names `where` and the
    region for a box that is not 4 numbers, is empty or leaves the image, or an empty caption."""
    if not isinstance(value, (list, tuple)):
        raise RegionError(f"{where}: 'regions' must be a list of {{'box', 'caption'}}, got "
                          f"{type(value).__name__}")
    out = []
    for k, region in enumerate(value):
        name = f"{where}: region #{k}"
        if not isinstance(region, dict) or "box" not in region or "caption" not in region:
            raise RegionError(f"{name} needs 'box' and 'caption', got {region!r:.80}")
        try:
            box = np.asarray(region["box"], np.float64)
        except (TypeError, ValueError):
            box = np.zeros(0)
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            raise RegionError(f"{name}: 'box' must be 4 numbers [x0, y0, x1, y1], got "
                              f"{region['box']!r:.80}")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise RegionError(f"{name}: box {box.tolist()} is empty or outside the "
                              f"{width}x{height} image (pixels, x0 < x1 <= width, y0 < y1 <= "
                              "height)")
        caption = region["caption"]
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8", errors="replace")
        if not isinstance(caption, str) or not caption.strip():
            raise RegionError(f"{name} has an empty caption")
        out.append((box.astype(np.float32), caption.strip()))
    return out


def to_view(box: np.ndarray, window, flip: bool = False, min_visible: float = 0.5):
    """`box` (pixels of the stored image) in a view cropped to `window` (left, top, right,
    bottom in the same pixels) and resized to a square, as [x0, y0, x1, y1] in [0, 1]; mirrored
    when the view is flipped. None when less than `min_visible` of its area is in the crop."""
    left, top, right, bottom = window
    clipped = np.array([max(box[0], left), max(box[1], top), min(box[2], right),
                        min(box[3], bottom)], np.float32)
    area = lambda b: max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    if area(clipped) < min_visible * area(box):
        return None
    scale = np.array([right - left, bottom - top] * 2, np.float32)
    out = (clipped - np.array([left, top] * 2, np.float32)) / scale
    if flip:
        out = np.array([1 - out[2], out[1], 1 - out[0], out[3]], np.float32)
    return np.clip(out, 0.0, 1.0)


# LocCa's decoder tasks on one region, as token sequences for the causal text tower and caption
# decoder. Ids past the tokenizer's vocabulary (`vocab_size`): two task tokens, then `bins`
# coordinate tokens (a coordinate in [0, 1] quantised to `bins` equal bins).
TASKS = ("ref", "gcap")         # referring expression: words -> box; grounded caption: box -> words


def extra_tokens(bins: int) -> int:
    """How many ids the grounding tasks add past the tokenizer's vocabulary."""
    return len(TASKS) + bins


def coordinate_ids(box: np.ndarray, bins: int, vocab_size: int) -> np.ndarray:
    """[x0, y0, x1, y1] in [0, 1] -> 4 coordinate token ids."""
    q = np.clip(np.floor(np.asarray(box, np.float64) * bins), 0, bins - 1).astype(np.int32)
    return vocab_size + len(TASKS) + q


def box_from_ids(ids: np.ndarray, bins: int, vocab_size: int) -> np.ndarray:
    """Coordinate token ids [..., 4] -> box [..., 4] in [0, 1], each at its bin's centre."""
    return (np.asarray(ids) - vocab_size - len(TASKS) + 0.5) / bins


def task_sequences(words: list[int], box: np.ndarray, *, bins: int, vocab_size: int,
                   max_len: int, bos: int | None, eos: int | None, pad: int) -> dict:
    """For a region's description (token ids, no BOS/EOS) and its view box: per task the
    sequence `{task}_tokens` [max_len], its `{task}_mask` and `{task}_targets` (True on the tokens
    the decoder is scored on, each predicted from the ones before it).

    ref:  [BOS] <ref>  w1 .. wn  x0 y0 x1 y1  [EOS]   (targets: the coordinates and EOS)
    gcap: [BOS] <gcap> x0 y0 x1 y1  w1 .. wn  [EOS]   (targets: the words and EOS)
    The words are cut to what fits."""
    head = [] if bos is None else [bos]
    tail = [] if eos is None else [eos]
    coords = coordinate_ids(box, bins, vocab_size).tolist()
    words = list(words)[:max(0, max_len - len(head) - 1 - 4 - len(tail))]
    out = {}
    for k, task in enumerate(TASKS):
        first, second = (words, coords) if task == "ref" else (coords, words)
        seq = head + [vocab_size + k] + first + second + tail
        tokens = np.full(max_len, pad, np.int32)
        tokens[:len(seq)] = seq
        mask = np.arange(max_len) < len(seq)
        targets = np.zeros(max_len, bool)
        targets[len(head) + 1 + len(first):len(seq)] = True
        out.update({f"{task}_tokens": tokens, f"{task}_mask": mask, f"{task}_targets": targets})
    return out
