"""Embedding whole eval sets on the mesh, in fixed-size padded batches (one compile each)."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from vlm_jax.data.tokenizer import Tokenizer, tokenize
from vlm_jax.parallel import sharding


def _global(x: np.ndarray, sh: NamedSharding):
    # Every process holds the whole eval set; each device takes its rows.
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def _host(x) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Embedder:
    def __init__(self, model: nn.Module, mesh: Mesh, rules, tokenizer: Tokenizer, max_len: int,
                 batch_size: int):
        n_shards = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(rules)]))
        self.batch = max(n_shards, batch_size // n_shards * n_shards)
        self.sharding = sharding.batch_sharding(mesh, rules)
        self.tokenizer, self.max_len, self.mesh, self.rules = tokenizer, max_len, mesh, rules
        self._img = jax.jit(lambda p, x: model.apply(
            {"params": p}, x, method=model.encode_image)["img/normed"])
        self._txt = jax.jit(lambda p, t, m: model.apply(
            {"params": p}, t, m, method=model.encode_text)["txt/normed"])

    def _batched(self, fn, params, *arrays) -> np.ndarray:
        n = len(arrays[0])
        out = []
        for start in range(0, n, self.batch):
            chunk = [a[start:start + self.batch] for a in arrays]
            pad = self.batch - len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) if pad else c for c in chunk]
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                y = fn(params, *[_global(c, self.sharding) for c in chunk])
            out.append(_host(y)[: self.batch - pad])
        return np.concatenate(out)

    def images_from(self, params, batches, n: int) -> np.ndarray:
        """Eval-pipeline batches (this process's rows, with `index` and `valid`) -> [n, D] in
        source order on every process; rows never seen (unreadable examples) are zero."""
        out = None
        for b in batches:
            g = {k: jax.make_array_from_process_local_data(self.sharding, np.asarray(b[k]))
                 for k in ("image", "index", "valid")}
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                y = _host(self._img(params, g["image"]))
            index, valid = _host(g["index"]), _host(g["valid"])
            if out is None:
                out = np.zeros((n, y.shape[-1]), y.dtype)
            out[index[valid]] = y[valid]
        return out

    def images(self, params, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> normalised [N, D]."""
        return self._batched(self._img, params, images)

    def texts(self, params, texts: list[str]) -> np.ndarray:
        """N strings -> normalised [N, D]."""
        ids, mask = tokenize(self.tokenizer, texts, self.max_len)
        return self._batched(self._txt, params, ids, mask)
