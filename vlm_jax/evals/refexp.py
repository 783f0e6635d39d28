"""Referring-expression accuracy (LocCa): for every region of the test split, the captioner is
prompted with `<ref>` and the region's description and decodes four coordinate tokens greedily
(each the most likely of the coordinate ids); the box is right when its IoU with the true one is
at least 0.5. Boxes are in the eval view (the set's crop), coordinates at their bins' centres.

Beside it, the box prior: the mean box of the train split's regions as the answer to every
expression (what a model that ignores the words and the image would do best on average).
Metrics: `refexp_accuracy` with its 95% Wilson interval (`_lo`, `_hi`), `refexp_mean_iou`,
`refexp_prior_accuracy` and `refexp_n` (regions scored). Needs the grounding objective
(`grounding.weight` > 0: the coordinate tokens) and records with `regions`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.config import ConfigError
from vlm_jax.data import images, pipeline, regions
from vlm_jax.evals import datasets
from vlm_jax.evals.stats import wilson


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes [..., 4] (x0, y0, x1, y1)."""
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    inter = w * h
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def read_regions(src, data_dir, view: images.View) -> list[list[tuple[np.ndarray, str]]]:
    """Each example's regions, boxes in its eval view ([0, 1]); [] for unusable examples."""
    examples, _ = pipeline.parsed(src, data_dir, need_captions=False)
    out = []
    for i in range(len(examples)):
        ex = examples[i]
        if "skipped" in ex or not ex.get("regions"):
            out.append([])
            continue
        window = view.window(*images.open_image(ex["image"]).size)
        out.append([(b, c) for b, c in ((regions.to_view(b, window), c)
                                        for b, c in ex["regions"]) if b is not None])
    return out


def sequences(embedder, captions: list[str], boxes: np.ndarray, bins: int):
    """The referring task's sequences of each description with its box ([n, 4] in [0, 1]):
    (tokens [n, max_len], mask, the position of each box's first coordinate)."""
    tok = embedder.tokenizer
    seqs = [regions.task_sequences(
        tok.encode(c), b, bins=bins, vocab_size=tok.vocab_size, max_len=embedder.max_len,
        bos=tok.bos_id if tok.add_bos else None, eos=tok.eos_id if tok.add_eos else None,
        pad=tok.pad_id) for c, b in zip(captions, boxes)]
    return (np.stack([q["ref_tokens"] for q in seqs]), np.stack([q["ref_mask"] for q in seqs]),
            np.array([int(np.argmax(q["ref_targets"])) for q in seqs], np.int32))


@functools.lru_cache(maxsize=None)
def _decoder(model, first: int, bins: int):
    """A jitted (params, tokens, mask, img_tokens, at) -> the 4 coordinate ids decoded greedily
    into positions at..at+3 of each row, each the argmax over ids first..first+bins-1."""
    def decode(params, tokens, mask, img_tokens, at):
        rows = jnp.arange(tokens.shape[0])
        picked = []
        for k in range(4):
            txt = model.apply({"params": params}, tokens, mask,
                              method=model.encode_text)["txt/tokens"]
            logits = model.apply({"params": params}, txt, mask, img_tokens,
                                 method=model.caption_logits)
            row = logits[rows, at + k - 1, first:first + bins]
            ids = first + jnp.argmax(row, axis=-1).astype(tokens.dtype)
            tokens = tokens.at[rows, at + k].set(ids)
            mask = mask.at[rows, at + k].set(True)
            picked.append(ids)
        return jnp.stack(picked, axis=1)
    return jax.jit(decode)


class Evaluator:
    image_keys = ("img/tokens",)
    needs = "caption_logits"

    def __init__(self, data, config):
        if config.grounding.weight <= 0:
            raise ConfigError("'eval.refexp' needs grounding.weight > 0 (the model writes boxes "
                              "as the grounding objective's coordinate tokens)")
        self.data, self.bins = data, config.grounding.bins

    def _regions(self, dataset: str, split: str):
        s = self.data.spec(dataset)
        return read_regions(datasets.source(s, self.data.split(dataset, split)),
                            self.data.data_dir, self.data.view(dataset))

    def _test(self, params, dataset: str):
        """The test regions' (descriptions, true boxes, image tokens of their images)."""
        rows = [(i, box, caption) for i, rs in enumerate(self._regions(dataset, "test"))
                for box, caption in rs]
        if not rows:
            raise ValueError(f"eval.refexp: {dataset!r} has no regions in its test split")
        img = self.data.images(params, dataset, key="img/tokens")[[i for i, _, _ in rows]]
        return [c for _, _, c in rows], np.stack([b for _, b, _ in rows]), img

    def _decode(self, params, captions, img):
        """Coordinate ids [n, 4] decoded greedily for each description."""
        emb = self.data.embedder
        first = emb.tokenizer.vocab_size + len(regions.TASKS)
        tokens, _, at = sequences(emb, captions, np.zeros((len(captions), 4)), self.bins)
        mask = np.arange(emb.max_len)[None] < at[:, None]       # the prompt; the box decoded
        return emb.batched(_decoder(emb.model, first, self.bins), params, tokens, mask, img, at,
                           what="referring expressions")

    def run(self, params, dataset: str) -> dict[str, float]:
        captions, truth, img = self._test(params, dataset)
        pred = regions.box_from_ids(self._decode(params, captions, img), self.bins,
                                    self.data.embedder.tokenizer.vocab_size)
        overlap, n = iou(pred, truth), len(captions)
        hits = float((overlap >= 0.5).sum())
        prior = np.mean([b for rs in self._regions(dataset, "train") for b, _ in rs], axis=0)
        lo, hi = wilson(hits, n)
        return {"refexp_accuracy": hits / n, "refexp_accuracy_lo": lo,
                "refexp_accuracy_hi": hi, "refexp_mean_iou": float(overlap.mean()),
                "refexp_prior_accuracy": float((iou(prior[None], truth) >= 0.5).mean()),
                "refexp_n": float(n)}

    def coordinates(self, params, dataset: str) -> dict[str, np.ndarray]:
        """Where the boxes go wrong, per coordinate (x0, y0, x1, y1): the share of test regions
        whose decoded coordinate is in the true bin (`decoded_exact`) or at most one bin off
        (`decoded_within_one`), and the same for the coordinate predicted given the true ones
        before it (`given_exact`, `given_within_one`)."""
        emb, vocab = self.data.embedder, self.data.embedder.tokenizer.vocab_size
        captions, truth, img = self._test(params, dataset)
        true_bins = regions.coordinate_ids(truth, self.bins, vocab) - vocab - len(regions.TASKS)
        decoded = self._decode(params, captions, img) - vocab - len(regions.TASKS)
        tokens, mask, at = sequences(emb, captions, truth, self.bins)
        given = emb.batched(_given(emb.model, vocab + len(regions.TASKS), self.bins), params,
                            tokens, mask, img, at, what="referring expressions")
        out = {}
        for name, got in (("decoded", decoded), ("given", given)):
            err = np.abs(np.asarray(got) - true_bins)
            out[f"{name}_exact"], out[f"{name}_within_one"] = (err == 0).mean(0), (err <= 1).mean(0)
        return out


@functools.lru_cache(maxsize=None)
def _given(model, first: int, bins: int):
    """A jitted (params, tokens, mask, img_tokens, at) -> the most likely coordinate id at each
    of positions at..at+3 given the sequence's tokens before it (one pass)."""
    def predict(params, tokens, mask, img_tokens, at):
        txt = model.apply({"params": params}, tokens, mask, method=model.encode_text)["txt/tokens"]
        logits = model.apply({"params": params}, txt, mask, img_tokens,
                             method=model.caption_logits)
        rows = jnp.arange(tokens.shape[0])[:, None]
        row = logits[rows, at[:, None] + jnp.arange(4)[None] - 1, first:first + bins]
        return jnp.argmax(row, axis=-1)
    return jax.jit(predict)
