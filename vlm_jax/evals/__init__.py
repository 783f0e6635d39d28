"""Evaluation on the built-in test splits: zero-shot classification, image-text retrieval (with
ITM re-ranking when the model has an ITM head), a linear probe on frozen features and, with an
MLM head, MLM accuracy."""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vlm_jax import objectives
from vlm_jax.data import builtin, pipeline
from vlm_jax.data.tokenizer import tokenize
from vlm_jax.evals import probe, retrieval, templates, zeroshot
from vlm_jax.evals.common import Embedder
from vlm_jax.losses import masked


class Evaluator:
    """Runs every eval the config names; returns {'eval/<dataset>/<metric>': value}."""

    def __init__(self, config, model, mesh, rules, tokenizer):
        self.config = config
        self.embedder = Embedder(model, mesh, rules, tokenizer, config.tokenizer.max_len,
                                 config.eval.batch_size)

    @functools.lru_cache(maxsize=None)
    def _texts(self, name: str):
        return pipeline.read_texts(pipeline.builtin_source(name), self.config.data_dir or None)

    def _images(self, params, name: str, tokens: bool = False, split: str = "test",
                key: str = "img/normed"):
        batches, n = pipeline.eval_batches(
            pipeline.builtin_source(name, split), self.config.data_dir or None,
            self.config.data.image_size, self.embedder.batch,
            num_threads=self.config.data.num_threads)
        return self.embedder.images_from(params, batches, n, tokens, key)

    def _templates(self, meta: dict) -> tuple:
        e = self.config.eval
        return {"builtin": tuple(meta["templates"]), "clip": templates.CLIP,
                "custom": tuple(e.custom_templates)}[e.templates]

    def _linear_probe(self, params, name: str) -> float:
        """Ridge classifier on the train split's `eval.probe_representation`, scored on test."""
        e, data_dir = self.config.eval, self.config.data_dir or None
        feats = {split: self._images(params, name, split=split, key=e.probe_representation)
                 for split in ("train", "test")}
        labels = {split: pipeline.read_texts(pipeline.builtin_source(name, split), data_dir)[1]
                  for split in ("train", "test")}
        if (labels["train"] < 0).all() or (labels["test"] < 0).all():
            raise ValueError(f"eval.linear_probe: dataset {name!r} has no class labels")
        return probe.ridge_top1(feats["train"], labels["train"], feats["test"], labels["test"],
                                e.probe_l2)

    def _itm_scorer(self, params, img_tokens):
        """(embed_texts, score) for re-ranking: the texts go through the tower once, and their
        tokens are kept for score(texts, image indices, text indices) -> ITM scores."""
        cache = {}

        def embed(texts):
            emb, tok, mask = self.embedder.texts(params, texts, tokens=True)
            cache[tuple(texts)] = (tok, mask)
            return emb

        def score(texts, img_idx, txt_idx):
            tok, mask = cache[tuple(texts)]
            return self.embedder.itm_scores(params, tok[txt_idx], mask[txt_idx],
                                            img_tokens[img_idx])
        return embed, score

    def _mlm_accuracy(self, params, captions, img_tokens) -> float:
        """MLM accuracy on each image's first caption, masked as in training (a fixed seed)."""
        m = objectives.mlm_objective(self.config, self.embedder.tokenizer)
        ids, mask = tokenize(self.embedder.tokenizer, [c[0] for c in captions],
                             self.config.tokenizer.max_len)
        inputs, chosen = masked.mlm_mask(
            jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask), mask_id=m.mask_id,
            vocab_size=m.vocab_size, first_regular=m.first_regular, keep=m.keep, rate=m.rate)
        chosen = np.asarray(chosen)
        pred = self.embedder.mlm_predictions(params, np.asarray(inputs), mask, img_tokens)
        return float((pred == ids)[chosen].mean())

    def run(self, params) -> dict[str, float]:
        t0 = time.perf_counter()
        e = self.config.eval
        out = {}
        texts = functools.partial(self.embedder.texts, params)
        for name in e.linear_probe:
            out[f"eval/{name}/linear_probe_top1"] = self._linear_probe(params, name)
        for name in dict.fromkeys(tuple(e.zeroshot) + tuple(e.retrieval)):
            captions, labels = self._texts(name)
            rerank = name in e.retrieval and self.embedder.has_itm and e.rerank_k > 0
            mlm = name in e.retrieval and self.embedder.has_mlm
            img = self._images(params, name, tokens=rerank or mlm)
            itm, embed = None, texts
            if rerank or mlm:
                img, img_tokens = img
            if rerank:
                embed, itm = self._itm_scorer(params, img_tokens)
            if mlm:
                out[f"eval/{name}/mlm_accuracy"] = self._mlm_accuracy(params, captions, img_tokens)
            if name in e.zeroshot:
                meta = builtin.info(name, self.config.data_dir or None)
                classes = zeroshot.class_embeddings(texts, meta["classes"], self._templates(meta),
                                                    tuple(e.class_names))
                out[f"eval/{name}/zeroshot_top1"] = zeroshot.top1(img, labels, classes)
            if name in e.retrieval:
                out.update({f"eval/{name}/{k}": v
                            for k, v in retrieval.recall(
                                img, captions, embed, itm=itm, rerank_k=e.rerank_k,
                                mesh=self.embedder.mesh, axes=self.embedder.axes).items()})
        logging.info("eval took %.1fs: %s", time.perf_counter() - t0,
                     " ".join(f"{k}={v:.3f}" for k, v in out.items()))
        return out
