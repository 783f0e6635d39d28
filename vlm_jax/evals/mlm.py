"""MLM accuracy: each test image's first caption masked as in training (a fixed seed), the MLM
head's most likely token compared with the true one at the chosen positions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import objectives
from vlm_jax.data.tokenizer import tokenize


def _argmax(logits):
    return logits.argmax(-1)


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
        ids, mask = tokenize(emb.tokenizer, [c[0] for c in captions], emb.max_len)
        inputs, chosen = self.objective.mask(jax.random.key(0), jnp.asarray(ids),
                                             jnp.asarray(mask))
        pred = emb.batched(emb.head("mlm_logits", _argmax), params, np.asarray(inputs), mask,
                            self.data.images(params, dataset, key="img/tokens"),
                            what="MLM predictions")
        return {"mlm_accuracy": float((pred == ids)[np.asarray(chosen)].mean())}
