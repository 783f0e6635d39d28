"""Image <-> text retrieval recall@k, optionally with ITM re-ranking.

The text pool is the set of distinct captions of a split, and an image's positives are its own
captions. Identical strings share one embedding, so a caption shared by many images (e.g.
"handwritten 7") is one text whose positives are all of those images:
- i2t R@k: the share of images with at least one of their captions among their k nearest texts;
- t2i R@k: the share of texts with at least one of their images among their k nearest images.

Re-ranking (ALBEF): each query's top `rerank_k` candidates by embedding similarity are reordered
by the ITM head's score of the (image, text) pair; the rest keep their order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# (texts, image indices, text indices) -> one ITM score per pair, higher = better match
PairScorer = Callable[[list[str], np.ndarray, np.ndarray], np.ndarray]


def _recall_at(positive: np.ndarray, order: np.ndarray, ks) -> dict[int, float]:
    """positive [queries, candidates]; order [queries, candidates] best first."""
    hits = np.take_along_axis(positive, order, axis=1)
    return {k: float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def _rerank(order: np.ndarray, k: int, score: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """Reorders each row's first k entries by score(query index, candidate index)."""
    k = min(k, order.shape[1])
    top = order[:, :k]
    queries = np.repeat(np.arange(order.shape[0]), k)
    s = score(queries, top.ravel()).reshape(top.shape)
    top = np.take_along_axis(top, np.argsort(-s, axis=1, kind="stable"), axis=1)
    return np.concatenate([top, order[:, k:]], axis=1)


def recall(image_emb: np.ndarray, captions: list[list[str]], embed_texts, ks=(1, 5),
           itm: PairScorer | None = None, rerank_k: int = 16) -> dict[str, float]:
    texts = sorted({c for caps in captions for c in caps})
    index = {t: j for j, t in enumerate(texts)}
    positive = np.zeros((len(captions), len(texts)), bool)       # [images, texts]
    for i, caps in enumerate(captions):
        positive[i, [index[c] for c in caps]] = True
    sim = image_emb @ embed_texts(texts).T
    i2t = np.argsort(-sim, axis=1, kind="stable")                # each image's texts, nearest first
    t2i = np.argsort(-sim.T, axis=1, kind="stable")              # each text's images
    orders = {"": (i2t, t2i)}
    if itm is not None and rerank_k > 0:
        orders["itm_"] = (_rerank(i2t, rerank_k, lambda q, c: itm(texts, q, c)),
                          _rerank(t2i, rerank_k, lambda q, c: itm(texts, c, q)))
    out = {}
    for prefix, (a, b) in orders.items():
        for k, v in _recall_at(positive, a, ks).items():
            out[f"{prefix}i2t_r{k}"] = v
        for k, v in _recall_at(positive.T, b, ks).items():
            out[f"{prefix}t2i_r{k}"] = v
    return out
