"""Image <-> text retrieval recall@k.

The text pool is the set of distinct captions of a split, and an image's positives are its own
captions. Identical strings share one embedding, so a caption shared by many images (e.g.
"handwritten 7") is one text whose positives are all of those images:
- i2t R@k: the share of images with at least one of their captions among their k nearest texts;
- t2i R@k: the share of texts with at least one of their images among their k nearest images.
"""
from __future__ import annotations

import numpy as np


def recall(image_emb: np.ndarray, captions: list[list[str]], embed_texts,
           ks=(1, 5)) -> dict[str, float]:
    texts = sorted({c for caps in captions for c in caps})
    index = {t: j for j, t in enumerate(texts)}
    positive = np.zeros((len(captions), len(texts)), bool)       # [images, texts]
    for i, caps in enumerate(captions):
        positive[i, [index[c] for c in caps]] = True
    sim = image_emb @ embed_texts(texts).T
    out = {}
    for k in ks:
        top_t = np.argsort(-sim, axis=1)[:, :k]                  # each image's k nearest texts
        out[f"i2t_r{k}"] = float(np.mean(np.take_along_axis(positive, top_t, axis=1).any(axis=1)))
        top_i = np.argsort(-sim, axis=0)[:k, :]                  # each text's k nearest images
        out[f"t2i_r{k}"] = float(np.mean(np.take_along_axis(positive, top_i, axis=0).any(axis=0)))
    return out
