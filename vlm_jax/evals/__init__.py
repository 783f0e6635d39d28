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

from vlm_jax import config as config_lib, objectives
from vlm_jax.data import builtin, pipeline
from vlm_jax.data.tokenizer import tokenize
from vlm_jax.evals import probe, retrieval, templates, zeroshot
from vlm_jax.evals.common import Embedder
from vlm_jax.losses import masked


class Evaluator:
    """Runs the evaluators the config names (eval.zeroshot, eval.retrieval, eval.linear_probe:
    datasets); returns {'<prefix><metric>': value}, by default 'eval/<dataset>/<metric>'."""

    def __init__(self, config, model, mesh, rules, tokenizer):
        self.config = config
        self.embedder = Embedder(model, mesh, rules, tokenizer, config.tokenizer.max_len,
                                 config.eval.batch_size)

    @functools.lru_cache(maxsize=None)
    def _texts(self, name: str, split: str = "test"):
        return pipeline.read_texts(pipeline.builtin_source(name, split),
                                   self.config.data_dir or None)

    def _images(self, params, name: str, tokens: bool = False, split: str = "test",
                key: str = "img/normed"):
        batches, n = pipeline.eval_batches(
            pipeline.builtin_source(name, split), self.config.data_dir or None,
            self.config.data.image_size, self.embedder.batch,
            num_threads=self.config.data.num_threads)
        return self.embedder.images_from(params, batches, n, tokens, key,
                                         what=f"embedding {name} {split} images")

    def _templates(self, meta: dict) -> tuple:
        e = self.config.eval
        return {"builtin": tuple(meta["templates"]), "clip": templates.CLIP,
                "custom": tuple(e.custom_templates)}[e.templates]

    def _linear_probe(self, params, name: str) -> float:
        """Ridge classifier on the train split's `eval.probe_representation`, scored on test."""
        e = self.config.eval
        feats = {split: self._images(params, name, split=split, key=e.probe_representation)
                 for split in ("train", "test")}
        labels = {split: self._texts(name, split)[1] for split in ("train", "test")}
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

    def _dataset(self, params, name: str, kinds) -> dict[str, dict[str, float]]:
        """{evaluator: metrics} of the due evaluators that name this dataset; the images are
        embedded once for all of them."""
        e = self.config.eval
        zs = "zeroshot" in kinds and name in e.zeroshot
        rt = "retrieval" in kinds and name in e.retrieval
        captions, labels = self._texts(name)
        rerank = rt and self.embedder.has_itm and e.rerank_k > 0
        mlm = rt and self.embedder.has_mlm
        img = self._images(params, name, tokens=rerank or mlm)
        if rerank or mlm:
            img, img_tokens = img
        texts = functools.partial(self.embedder.texts, params)
        out = {}
        if zs:
            meta = builtin.info(name, self.config.data_dir or None)
            classes = zeroshot.class_embeddings(texts, meta["classes"], self._templates(meta),
                                                tuple(e.class_names))
            out["zeroshot"] = {"zeroshot_top1": zeroshot.top1(img, labels, classes)}
        if rt:
            itm, embed = None, texts
            if rerank:
                embed, itm = self._itm_scorer(params, img_tokens)
            out["retrieval"] = retrieval.recall(img, captions, embed, itm=itm,
                                                rerank_k=e.rerank_k, mesh=self.embedder.mesh,
                                                axes=self.embedder.axes)
            if mlm:
                out["retrieval"]["mlm_accuracy"] = self._mlm_accuracy(params, captions, img_tokens)
        return out

    def run(self, params, kinds=config_lib.EVALUATORS) -> dict[str, float]:
        """The evaluators named in `kinds` on every dataset they list; each metric is named
        `eval.<evaluator>_prefix` (with the dataset) + the metric."""
        unknown = set(kinds) - set(config_lib.EVALUATORS)
        if unknown:
            raise ValueError(f"unknown evaluators {sorted(unknown)}; "
                             f"choose from {config_lib.EVALUATORS}")
        t0 = time.perf_counter()
        e = self.config.eval
        out = {}

        def add(kind: str, name: str, metrics: dict) -> None:
            prefix = e[f"{kind}_prefix"].format(dataset=name)
            out.update({prefix + k: v for k, v in metrics.items()})

        if "linear_probe" in kinds:
            for name in e.linear_probe:
                add("linear_probe", name, {"linear_probe_top1": self._linear_probe(params, name)})
        names = ([n for n in e.zeroshot if "zeroshot" in kinds]
                 + [n for n in e.retrieval if "retrieval" in kinds])
        for name in dict.fromkeys(names):
            for kind, metrics in self._dataset(params, name, kinds).items():
                add(kind, name, metrics)
        ran = [k for k in kinds if e[k]]
        logging.info("eval (%s) took %.1fs: %s", ", ".join(ran), time.perf_counter() - t0,
                     " ".join(f"{k}={v:.3f}" for k, v in out.items()))
        return out
