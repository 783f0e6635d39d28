"""What every evaluator shares: the model's towers and heads run over whole eval sets on the
mesh in fixed-size padded batches (one compile each), and the eval sets themselves."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
from absl import logging
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from vlm_jax.data import images, pipeline
from vlm_jax.evals import datasets
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
    """The model's towers and heads as jitted functions over whole eval sets on the mesh."""

    def __init__(self, model: nn.Module, mesh: Mesh, rules, tokenizer: Tokenizer, max_len: int,
                 batch_size: int):
        self.axes = sharding.batch_axes(rules)
        n_shards = sharding.batch_shards(mesh, rules)
        self.batch = max(n_shards, batch_size // n_shards * n_shards)
        self.sharding = sharding.batch_sharding(mesh, rules)
        self.tokenizer, self.max_len, self.mesh, self.rules = tokenizer, max_len, mesh, rules
        self.model = model
        # (params, ids, mask) -> the normalised text embeddings
        self.encode_text = jax.jit(lambda p, t, m: model.apply(
            {"params": p}, t, m, method=model.encode_text)["txt/normed"])
        self._txt_tokens = jax.jit(lambda p, t, m: _pick(model.apply(
            {"params": p}, t, m, method=model.encode_text), "txt/normed", "txt/tokens"))

    @classmethod
    def from_setup(cls, s) -> "Embedder":
        """The embedder of a vlm_jax.setup.Setup's model, on its mesh, at config.eval.batch_size
        (shared by setups of the same program config: its programs are traced once)."""
        return s.shared("embedder", lambda: cls(
            s.model, s.mesh, s.rules, s.tokenizer, s.config.tokenizer.max_len,
            s.config.eval.batch_size), s.config.eval.batch_size)

    def has(self, method: str) -> bool:
        """Whether the model has the head behind `method` ('itm_logits', 'mlm_logits', ...)."""
        return self.model.has_head(method)

    @functools.lru_cache(maxsize=None)
    def features(self, keys: tuple[str, ...] = ("img/normed",)):
        """A jitted (params, images) -> {key: the image tower's output} for `keys`
        ('img/normed', 'img/tokens', 'img/pre_logits', ...)."""
        model = self.model
        return jax.jit(lambda p, x: {k: v for k, v in model.apply(
            {"params": p}, x, method=model.encode_image).items() if k in keys})

    @functools.lru_cache(maxsize=None)
    def head(self, method: str, reduce=None):
        """A jitted (params, *inputs) -> the model method's output (`reduce` applied)."""
        model = self.model
        return jax.jit(lambda p, *args: (reduce or (lambda x: x))(
            model.apply({"params": p}, *args, method=method)))

    def batched(self, fn, params, *arrays, what: str = "embedding"):
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

    def images_from(self, params, batches, n: int, keys=("img/normed",),
                    what: str = "embedding images") -> dict:
        """Eval-pipeline batches (this process's rows, with `index` and `valid`) -> {key: [n, ...]}
        in source order on every process, plus 'valid' [n]: False where the image could not be
        read (its rows are zero)."""
        out, ticker = None, Ticker(what, n, "images")
        seen = np.zeros(n, bool)
        fn = self.features(tuple(keys))
        for b in batches:
            g = {k: jax.make_array_from_process_local_data(self.sharding, np.asarray(b[k]))
                 for k in ("image", "index", "valid")}
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                y = jax.tree.map(_host, fn(params, g["image"]))
            index, valid = _host(g["index"]), _host(g["valid"])
            if out is None:
                out = jax.tree.map(lambda a: np.zeros((n, *a.shape[1:]), a.dtype), y)
            for k in y:
                out[k][index[valid]] = y[k][valid]
            seen[index[valid]] = True
            ticker.update(int(valid.sum()))
        ticker.close()
        if not seen.all():
            logging.warning("%s: %d of %d images could not be read and are left out",
                            what, int((~seen).sum()), n)
        return {**out, "valid": seen}

    def images(self, params, images: np.ndarray, key: str = "img/normed") -> np.ndarray:
        """uint8 [N, S, S, 3] -> the image tower's `key` [N, ...] (default: normalised [N, D])."""
        return self.batched(self.features((key,)), params, images,
                             what="embedding images")[key]

    def texts(self, params, texts: list[str], tokens: bool = False):
        """N strings -> normalised [N, D]; with `tokens`, (embeddings, text tower tokens
        [N, L, W], mask [N, L])."""
        ids, mask = tokenize(self.tokenizer, texts, self.max_len)
        if not tokens:
            return self.batched(self.encode_text, params, ids, mask, what="embedding texts")
        emb, tok = self.batched(self._txt_tokens, params, ids, mask, what="embedding texts")
        return emb, tok, mask


class EvalData:
    """The eval sets as evaluators read them: captions and labels (read once), classes and
    prompts, and image-tower outputs of the params under evaluation, computed once per dataset
    and split for all the evaluators of one run (`reset` between runs)."""

    def __init__(self, config, embedder: Embedder):
        self.config, self.embedder = config, embedder
        self.data_dir = config.data_dir or None
        self._images: dict[tuple[str, str, str], np.ndarray] = {}

    def reset(self) -> None:
        self._images.clear()

    def spec(self, name: str):
        """The set's eval_dataset(...) entry (eval.datasets.NAME or a built-in's)."""
        return datasets.spec(self.config, name)

    def view(self, name: str) -> images.View:
        """The set's eval view: the model's (model.image.*), the set's `resize` overriding."""
        return images.View.from_config(self.config, self.spec(name).resize)

    def split(self, name: str, split: str) -> str:
        """'test' / 'train' / 'val' -> the set's own name for that split."""
        s = self.spec(name)
        return {"test": s.split, "train": s.train_split, "val": s.val_split}.get(split, split)

    def embed_images(self, params, name: str, split: str, keys) -> None:
        """One pass over a split's images for every output in `keys` not embedded yet."""
        keys = tuple(sorted(k for k in keys if (name, split, k) not in self._images))
        if not keys:
            return
        s = self.spec(name)
        batches, n = pipeline.eval_batches(
            datasets.source(s, self.split(name, split)), self.data_dir, self.view(name),
            self.embedder.batch, num_threads=self.config.data.num_threads)
        out = self.embedder.images_from(params, batches, n, keys,
                                        what=f"embedding {name} {split} images")
        self._images.update({(name, split, k): v for k, v in out.items()})

    def images(self, params, name: str, split: str = "test", key: str = "img/normed"):
        """The image tower's `key` for every example of the split [N, ...], in source order;
        key 'valid': whether each image could be read (the others' rows are zero)."""
        self.embed_images(params, name, split, () if key == "valid" else (key,))
        if (name, split, key) not in self._images:       # 'valid' of a split not embedded yet
            self.embed_images(params, name, split, ("img/normed",))
        return self._images[name, split, key]

    @functools.lru_cache(maxsize=None)
    def texts(self, name: str, split: str = "test"):
        """(each example's captions, labels [N] with -1 where there is none)."""
        return pipeline.read_texts(datasets.source(self.spec(name), self.split(name, split)),
                                   self.data_dir)

    def classes(self, name: str) -> list[dict]:
        return datasets.classes(self.spec(name), name, self.data_dir)

    def templates(self, name: str):
        """A tuple of templates, or {class name: prompts} (datasets.templates)."""
        return datasets.templates(self.spec(name), name, self.data_dir)
