"""Zero-shot classification with a prompt ensemble: each class is the renormalised mean of its
templates' text embeddings; an image's prediction is the most similar class."""
from __future__ import annotations

import numpy as np


def class_embeddings(embed_texts, classes: list[dict], templates: list[str]) -> np.ndarray:
    texts = [t.format(**c) for c in classes for t in templates]
    emb = embed_texts(texts).reshape(len(classes), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def top1(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray) -> float:
    return float(np.mean(np.argmax(image_emb @ class_emb.T, axis=1) == labels))
