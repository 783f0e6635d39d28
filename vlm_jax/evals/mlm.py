"""MLM accuracy: each test image's first caption masked as in training (a fixed seed), the MLM
head's most likely token compared with the true one at the chosen positions: over every chosen
token (mlm_accuracy), and over those of content words only (mlm_content_accuracy): the words
that tell captions of different images apart, here those in fewer than half of the split's
images' captions (digits: the digit's name; shapes: colours, kinds, counts, relations), where
templated words are easy to guess without the image."""
from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import objectives
from vlm_jax.data.tokenizer import tokenize


def _argmax(logits):
    return logits.argmax(-1)


def _words(text: str):
    """(start, end, lower-cased word) of each word, punctuation left out."""
    return [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"\w+", text)]


def content_words(captions: list[list[str]]) -> set[str]:
    """Words in fewer than half of the images' captions."""
    df = collections.Counter(w for caps in captions for w in {x[2] for c in caps for x in _words(c)})
    return {w for w, n in df.items() if n < len(captions) / 2}


def content_mask(tokenizer, texts: list[str], max_len: int, words: set[str]) -> np.ndarray:
    """[N, max_len] True on the tokens of `words` in each text (laid out as `tokenize` does:
    a word's tokens are those its text prefix adds)."""
    out = np.zeros((len(texts), max_len), bool)
    head = 1 if tokenizer.add_bos else 0
    for i, text in enumerate(texts):
        for start, end, word in _words(text):
            if word in words:
                a = head + len(tokenizer.encode(text[:start]))
                b = head + len(tokenizer.encode(text[:end]))
                out[i, a:min(b, max_len - 1)] = True
    return out


class Evaluator:
    image_keys = ("img/tokens",)
    needs = "mlm_logits"

    def __init__(self, data, config):
        self.data = data
        self.objective = objectives.objective_class("mlm").from_config(
            config, data.embedder.tokenizer)

    def run(self, params, dataset: str) -> dict[str, float]:
        emb = self.data.embedder
        captions, _ = self.data.texts(dataset)
        keep = np.array([bool(c) for c in captions])
        captions = [c for c in captions if c]
        texts = [c[0] for c in captions]
        ids, mask = tokenize(emb.tokenizer, texts, emb.max_len)
        inputs, chosen = self.objective.mask(jax.random.key(0), jnp.asarray(ids),
                                             jnp.asarray(mask))
        pred = emb.batched(emb.head("mlm_logits", _argmax), params, np.asarray(inputs), mask,
                            self.data.images(params, dataset, key="img/tokens")[keep],
                            what="MLM predictions")
        hit, chosen = pred == ids, np.asarray(chosen)
        content = chosen & content_mask(emb.tokenizer, texts, emb.max_len,
                                        content_words(captions))
        return {"mlm_accuracy": float(hit[chosen].mean()),
                "mlm_content_accuracy": float(hit[content].mean()) if content.any() else 0.0}
