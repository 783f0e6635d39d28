"""Evaluation: zero-shot classification and image-text retrieval on the built-in test splits."""
from __future__ import annotations

import functools
import time

from absl import logging

from vlm_jax.data import builtin, pipeline
from vlm_jax.evals import retrieval, zeroshot
from vlm_jax.evals.common import Embedder


class Evaluator:
    """Runs every eval the config names; returns {'eval/<dataset>/<metric>': value}."""

    def __init__(self, config, model, mesh, rules, tokenizer):
        self.config = config
        self.embedder = Embedder(model, mesh, rules, tokenizer, config.tokenizer.max_len,
                                 config.eval.batch_size)

    @functools.lru_cache(maxsize=None)
    def _texts(self, name: str):
        return pipeline.read_texts(pipeline.builtin_source(name), self.config.data_dir or None)

    def _images(self, params, name: str):
        batches, n = pipeline.eval_batches(
            pipeline.builtin_source(name), self.config.data_dir or None,
            self.config.data.image_size, self.embedder.batch,
            num_threads=self.config.data.num_threads)
        return self.embedder.images_from(params, batches, n)

    def run(self, params) -> dict[str, float]:
        t0 = time.perf_counter()
        e = self.config.eval
        out = {}
        texts = functools.partial(self.embedder.texts, params)
        for name in dict.fromkeys(tuple(e.zeroshot) + tuple(e.retrieval)):
            captions, labels = self._texts(name)
            img = self._images(params, name)
            if name in e.zeroshot:
                meta = builtin.info(name, self.config.data_dir or None)
                classes = zeroshot.class_embeddings(texts, meta["classes"], meta["templates"])
                out[f"eval/{name}/zeroshot_top1"] = zeroshot.top1(img, labels, classes)
            if name in e.retrieval:
                out.update({f"eval/{name}/{k}": v
                            for k, v in retrieval.recall(img, captions, texts).items()})
        logging.info("eval took %.1fs: %s", time.perf_counter() - t0,
                     " ".join(f"{k}={v:.3f}" for k, v in out.items()))
        return out
