"""Dataset filtering (the DataComp idea): keep the pairs a trained model and a few text and image
rules agree are good, as a new ArrayRecord dataset.

Rules run in this order; a record is dropped by the first that rejects it, and counted under it:
  unreadable         the record cannot be parsed (or has no image / caption)
  min_words          every caption has fewer than `min_words` words (short captions go first)
  duplicate_caption  every remaining caption (case and spacing folded) was seen in a kept record
  duplicate_image    its 64-bit difference hash is within `phash_distance` bits of a kept image's
  clip_score         its best caption's image-text cosine is below `min_score`, or outside the
                     top `keep_fraction` of the records the other rules kept
Kept records are copied byte for byte (captions dropped by the text rules removed), one output
shard per input file.
"""
from __future__ import annotations

import dataclasses
import json
import os

import msgpack
import numpy as np

from vlm_jax.data import images, records
from vlm_jax.data.sources import Parse, expand_paths, record_counts

RULES = ("unreadable", "min_words", "duplicate_caption", "duplicate_image", "clip_score")


@dataclasses.dataclass(frozen=True)
class Rules:
    min_words: int = 0
    dedup_captions: bool = True
    phash_distance: int = -1        # -1: off; 0: exact hash matches only
    min_score: float | None = None
    keep_fraction: float | None = None


def _fold(caption: str) -> str:
    return " ".join(caption.lower().split())


def text_and_image_rules(examples: list[dict | None], rules: Rules) -> tuple[list, dict]:
    """examples: parsed records (None when unreadable) -> (kept captions per record, or None
    when dropped; counts per rule)."""
    counts = dict.fromkeys(RULES, 0)
    seen_captions: set[str] = set()
    kept_hashes = np.zeros(0, np.uint64)
    exact_hashes: set[int] = set()
    out = []
    for ex in examples:
        if ex is None:
            counts["unreadable"] += 1
            out.append(None)
            continue
        caps = [c for c in ex["captions"] if len(c.split()) >= rules.min_words]
        if not caps:
            counts["min_words"] += 1
            out.append(None)
            continue
        if rules.dedup_captions:
            caps = [c for c in caps if _fold(c) not in seen_captions]
            if not caps:
                counts["duplicate_caption"] += 1
                out.append(None)
                continue
        if rules.phash_distance >= 0:
            h = images.dhash(ex["image"])
            if rules.phash_distance == 0:
                dup = h in exact_hashes
            else:
                dist = np.unpackbits((kept_hashes ^ np.uint64(h)).view(np.uint8).reshape(-1, 8),
                                     axis=1).sum(1)
                dup = bool(len(dist)) and int(dist.min()) <= rules.phash_distance
            if dup:
                counts["duplicate_image"] += 1
                out.append(None)
                continue
            exact_hashes.add(h)
            kept_hashes = np.append(kept_hashes, np.uint64(h))
        seen_captions.update(_fold(c) for c in caps)
        out.append(caps)
    return out, counts


def score_rule(scores: np.ndarray, alive: np.ndarray, rules: Rules) -> np.ndarray:
    """Which alive records pass the score rule (a bool mask over all records)."""
    keep = alive.copy()
    if rules.min_score is not None:
        keep &= scores >= rules.min_score
    if rules.keep_fraction is not None:
        k = int(round(rules.keep_fraction * alive.sum()))
        order = np.argsort(-np.where(alive, scores, -np.inf), kind="stable")
        top = np.zeros_like(alive)
        top[order[:k]] = True
        keep &= top
    return keep


def read(pattern: str):
    """(files, raw records per file, parsed examples or None) of ArrayRecord shards."""
    import grain
    files = expand_paths(pattern)
    counts = record_counts(files)
    raw = grain.sources.ArrayRecordDataSource(files)
    parse = Parse(tuple(files), counts)
    examples = []
    for i in range(len(raw)):
        ex = parse(i, raw[i])
        examples.append(None if "skipped" in ex else ex)
    return files, counts, raw, examples


def filter_dataset(pattern: str, out_dir: str, rules: Rules, score_fn=None) -> dict:
    """Applies the rules to the shards matching `pattern`; writes kept records to `out_dir`
    (one shard per input) and `out_dir/filter_report.json`; returns the report.

    score_fn(examples, captions) -> [N] best-caption cosine (None: no score rule)."""
    if (rules.min_score is not None or rules.keep_fraction is not None) and score_fn is None:
        raise ValueError("min_score / keep_fraction need a model to score with")
    files, counts, raw, examples = read(pattern)
    caps, dropped = text_and_image_rules(examples, rules)
    alive = np.array([c is not None for c in caps])
    scores = np.full(len(caps), np.nan, np.float32)
    if score_fn is not None and alive.any():
        idx = np.flatnonzero(alive)
        scores[idx] = score_fn([examples[i] for i in idx], [caps[i] for i in idx])
        keep = score_rule(np.nan_to_num(scores, nan=-np.inf), alive, rules)
        dropped["clip_score"] = int(alive.sum() - keep.sum())
    else:
        keep = alive
    os.makedirs(out_dir, exist_ok=True)
    start = 0
    for f, n in zip(files, counts):
        kept = (i for i in range(start, start + n) if keep[i])
        records.write_raw(os.path.join(out_dir, os.path.basename(f)),
                          (_rewrite(raw[i], caps[i]) for i in kept))
        start += n
    valid = scores[keep & ~np.isnan(scores)]
    report = {"input": pattern, "records": len(examples), "kept": int(keep.sum()),
              "dropped": dropped, "rules": dataclasses.asdict(rules),
              "kept_scores": ({"min": float(valid.min()), "median": float(np.median(valid)),
                               "max": float(valid.max())} if len(valid) else None)}
    with open(os.path.join(out_dir, "filter_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _rewrite(record: bytes, captions: list[str]) -> bytes:
    ex = msgpack.unpackb(record, raw=False)
    if ex.get("captions") == captions:
        return record
    ex["captions"] = captions
    return msgpack.packb(ex, use_bin_type=True)


def model_scorer(workdir: str, step: int | None = None, resize: str | None = None,
                 chunk: int = 2048):
    """score_fn from a training workdir's checkpoint: the cosine between each record's image (the
    model's eval view, `resize` replacing its mode where given) and its best caption."""
    from vlm_jax.evals.common import Embedder
    from vlm_jax.train import evaluate
    s, params, _ = evaluate.restore(workdir, step)
    embed, view = Embedder.from_setup(s), images.View.from_config(s.config, resize)

    def score(examples: list[dict], captions: list[list[str]]) -> np.ndarray:
        out = np.empty(len(examples), np.float32)
        for a in range(0, len(examples), chunk):
            exs, caps = examples[a:a + chunk], captions[a:a + chunk]
            imgs = np.stack([view.render(ex["image"])[0] for ex in exs])
            with s.context():
                zi = embed.images(params, imgs)
                zt = embed.texts(params, [c for cs in caps for c in cs])
            pos = 0
            for i, cs in enumerate(caps):
                out[a + i] = float((zt[pos:pos + len(cs)] @ zi[i]).max())
                pos += len(cs)
        return out

    return score
