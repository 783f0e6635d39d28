"""Embedding whole eval sets on the mesh, in fixed-size padded batches (one compile each)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from vlm_jax.data.tokenizer import Tokenizer, tokenize
from vlm_jax.progress import Ticker
from vlm_jax.parallel import sharding


def _global(x: np.ndarray, sh: NamedSharding):
    # Every process holds the whole eval set; each device takes its rows.
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def _host(x) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _pick(out: dict, *keys):
    return tuple(out[k] for k in keys)


class Embedder:
    def __init__(self, model: nn.Module, mesh: Mesh, rules, tokenizer: Tokenizer, max_len: int,
                 batch_size: int):
        self.axes = sharding.batch_axes(rules)
        n_shards = int(np.prod([mesh.shape[a] for a in self.axes]))
        self.batch = max(n_shards, batch_size // n_shards * n_shards)
        self.sharding = sharding.batch_sharding(mesh, rules)
        self.tokenizer, self.max_len, self.mesh, self.rules = tokenizer, max_len, mesh, rules
        self.model = model
        self._img = self.features("img/normed")
        self._txt = jax.jit(lambda p, t, m: model.apply(
            {"params": p}, t, m, method=model.encode_text)["txt/normed"])
        self._img_tokens = jax.jit(lambda p, x: _pick(model.apply(
            {"params": p}, x, method=model.encode_image), "img/normed", "img/tokens"))
        self._txt_tokens = jax.jit(lambda p, t, m: _pick(model.apply(
            {"params": p}, t, m, method=model.encode_text), "txt/normed", "txt/tokens"))
        self.has_itm = getattr(model, "itm", False)
        self.has_mlm = bool(getattr(model, "mlm_vocab", 0))
        if self.has_mlm:
            self._mlm = jax.jit(lambda p, t, m, img: model.apply(
                {"params": p}, t, m, img, method="mlm_logits").argmax(-1))
        if self.has_itm:
            def itm(p, txt, mask, img):
                logits = model.apply({"params": p}, txt, mask, img, method="itm_logits")
                return logits[:, 1] - logits[:, 0]
            self._itm = jax.jit(itm)

    @functools.lru_cache(maxsize=None)
    def features(self, key: str):
        """A jitted (params, images) -> the image tower's output `key` ('img/pre_logits', ...)."""
        model = self.model
        return jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image)[key])

    def _batched(self, fn, params, *arrays, what: str = "embedding"):
        """fn over fixed-size padded chunks of `arrays`; its output (an array or a tuple of
        arrays) concatenated back to len(arrays[0]) rows."""
        n = len(arrays[0])
        out, ticker = [], Ticker(what, n, "rows")
        for start in range(0, n, self.batch):
            chunk = [a[start:start + self.batch] for a in arrays]
            pad = self.batch - len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) if pad else c for c in chunk]
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                y = fn(params, *[_global(c, self.sharding) for c in chunk])
            out.append(jax.tree.map(lambda a: _host(a)[: self.batch - pad], y))
            ticker.update(self.batch - pad)
        ticker.close()
        return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

    def images_from(self, params, batches, n: int, tokens: bool = False, key: str = "img/normed",
                    what: str = "embedding images"):
        """Eval-pipeline batches (this process's rows, with `index` and `valid`) -> [n, D] in
        source order on every process; rows never seen (unreadable examples) are zero.
        With `tokens`, (embeddings, image tower tokens [n, T, W]); `key` picks another output."""
        out, ticker = None, Ticker(what, n, "images")
        fn = self._img_tokens if tokens else self.features(key)
        for b in batches:
            g = {k: jax.make_array_from_process_local_data(self.sharding, np.asarray(b[k]))
                 for k in ("image", "index", "valid")}
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                y = jax.tree.map(_host, fn(params, g["image"]))
            index, valid = _host(g["index"]), _host(g["valid"])
            if out is None:
                out = jax.tree.map(lambda a: np.zeros((n, *a.shape[1:]), a.dtype), y)
            for o, a in zip(jax.tree.leaves(out), jax.tree.leaves(y)):
                o[index[valid]] = a[valid]
            ticker.update(int(valid.sum()))
        ticker.close()
        return out

    def images(self, params, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> normalised [N, D]."""
        return self._batched(self._img, params, images, what="embedding images")

    def texts(self, params, texts: list[str], tokens: bool = False):
        """N strings -> normalised [N, D]; with `tokens`, (embeddings, text tower tokens
        [N, L, W], mask [N, L])."""
        ids, mask = tokenize(self.tokenizer, texts, self.max_len)
        if not tokens:
            return self._batched(self._txt, params, ids, mask, what="embedding texts")
        emb, tok = self._batched(self._txt_tokens, params, ids, mask, what="embedding texts")
        return emb, tok, mask

    def mlm_predictions(self, params, ids, mask, img_tokens) -> np.ndarray:
        """The MLM head's most likely id at every position [N, L]."""
        return self._batched(self._mlm, params, ids, mask, img_tokens, what="MLM predictions")

    def itm_scores(self, params, txt_tokens, txt_mask, img_tokens) -> np.ndarray:
        """ITM match logit minus no-match logit for each (text row, image row) pair."""
        return self._batched(self._itm, params, txt_tokens, txt_mask, img_tokens,
                             what="ITM re-ranking")
