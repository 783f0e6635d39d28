"""Image <-> text retrieval recall@k, optionally with ITM re-ranking.

The text pool is the set of distinct captions of a split, and an image's positives are its own
captions. Identical strings share one embedding, so a caption shared by many images (e.g.
"handwritten 7") is one text whose positives are all of those images:
- i2t R@k: the share of images with at least one of their captions among their k nearest texts;
- t2i R@k: the share of texts with at least one of their images among their k nearest images;
- r_mean: the mean of the six (R@1/5/10 both ways).

Rankings are computed on the devices (`top_k`): the candidates are split over the mesh's batch
axes, each device keeps the k best of its shard for a chunk of queries, and the shards' lists
are merged. Neither the hosts nor any device ever hold a queries x candidates matrix.

Re-ranking (ALBEF): each query's top `rerank_k` candidates by embedding similarity are reordered
by the ITM head's score of the (image, text) pair (`itm_` recalls); the rest keep their order.
BLIP's re-ranking adds the pair's cosine similarity to the ITM score (`itm_sim_` recalls); given
the model's logit scale, the `itm_itc_` recalls add the similarity at that scale, the logit the
contrastive loss trained: ITM's log-odds plus ITC's log-probability of the candidate (up to a
constant per query), a product of the two heads' beliefs. Beside
each, `..._i2t_r1_p` and `..._t2i_r1_p`: the exact McNemar p-value of re-ranked against
similarity R@1 over the same queries (below 0.05: the difference is not noise).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlm_jax.evals import stats
from vlm_jax.parallel import sharding

# (texts, image indices, text indices) -> one ITM score per pair, higher = better match
PairScorer = Callable[[list[str], np.ndarray, np.ndarray], np.ndarray]


@functools.lru_cache(maxsize=None)
def _top_k_fn(mesh: Mesh | None, axes: tuple[str, ...], k: int, shard_len: int):
    def body(q, keys, valid):
        s = jnp.where(valid[None], q @ keys.T, -jnp.inf)
        v, i = jax.lax.top_k(s, min(k, shard_len))          # ties: the lower index first
        if not axes:
            return i
        i = i + jax.lax.axis_index(axes) * shard_len
        v = jax.lax.all_gather(v, axes, axis=1, tiled=True)  # shard order = global index order
        i = jax.lax.all_gather(i, axes, axis=1, tiled=True)
        _, j = jax.lax.top_k(v, k)
        return jnp.take_along_axis(i, j, axis=1)
    if mesh is None:
        return jax.jit(body)
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(axes), P(axes)),
                                 out_specs=P(), check_vma=False))


def top_k(queries: np.ndarray, keys: np.ndarray, k: int, mesh: Mesh | None = None,
          axes: Sequence[str] = (), chunk: int = 1024) -> np.ndarray:
    """[Q, k] indices of each query's k highest-scoring keys (dot product), best first, ties to
    the lower index. With a mesh the keys are split over `axes`: top-k per shard, then merged."""
    axes = tuple(axes) if mesh is not None else ()
    n = sharding.shards(mesh, axes) if axes else 1
    m = len(keys)
    k = min(k, m)
    shard_len = -(-m // n)
    pad = shard_len * n - m
    keys = np.concatenate([keys, np.zeros((pad, keys.shape[1]), keys.dtype)]).astype(np.float32)
    valid = np.arange(shard_len * n) < m
    fn = _top_k_fn(mesh, axes, k, shard_len)
    if mesh is not None:
        sh, repl = NamedSharding(mesh, P(axes)), NamedSharding(mesh, P())
        keys, valid = (jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx])
                       for x in (keys, valid))
    out = []
    for start in range(0, len(queries), chunk):     # fixed-size chunks: one compile
        q = queries[start:start + chunk].astype(np.float32)
        rows = len(q)
        q = np.concatenate([q, np.zeros((chunk - rows, q.shape[1]), np.float32)])
        if mesh is not None:
            q = jax.make_array_from_callback(q.shape, repl, lambda idx, q=q: q[idx])
        idx = fn(q, keys, valid)
        out.append(np.asarray(idx.addressable_shards[0].data)[:rows])
    return np.concatenate(out) if out else np.zeros((0, k), np.int32)


def _hits(order: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """order [Q, K] candidate indices; positives [Q, P] each query's positive candidates,
    padded with -1 -> [Q, K] booleans."""
    return (order[:, :, None] == positives[:, None, :]).any(axis=2)


def _padded(lists: list[list[int]]) -> np.ndarray:
    out = np.full((len(lists), max(1, max(map(len, lists), default=1))), -1, np.int64)
    for i, xs in enumerate(lists):
        out[i, :len(xs)] = xs
    return out


def _pair_scores(top: np.ndarray, score: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """[Q, k] score(query index, candidate index) of each query's top k candidates."""
    queries = np.repeat(np.arange(top.shape[0]), top.shape[1])
    return np.asarray(score(queries, top.ravel()), np.float32).reshape(top.shape)


def cosines(queries: np.ndarray, candidates: np.ndarray, top: np.ndarray) -> np.ndarray:
    """[Q, k] similarity of each query (unit embeddings) to its top k candidates."""
    return np.einsum("qd,qkd->qk", queries.astype(np.float32), candidates[top].astype(np.float32))


def _rerank(order: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Reorders each row's first k entries (k: scores' columns) by their scores."""
    k = scores.shape[1]
    top = np.take_along_axis(order[:, :k], np.argsort(-scores, axis=1, kind="stable"), axis=1)
    return np.concatenate([top, order[:, k:]], axis=1)


def true_ranks(queries: np.ndarray, keys: np.ndarray, positives: list[list[int]],
               chunk: int = 1024) -> np.ndarray:
    """[Q] 1-based rank by cosine of each query's best true match among all keys, ties to the
    lower index as in `top_k` (equal keys, such as texts cut to the same tokens, tie), so
    rank <= k exactly where recall@k counts a hit."""
    out = np.empty(len(positives), np.int64)
    keys = keys.astype(np.float32)
    for a in range(0, len(positives), chunk):
        s = queries[a:a + chunk].astype(np.float32) @ keys.T
        pos = _padded(positives[a:a + chunk])
        score = np.where(pos >= 0, np.take_along_axis(s, np.maximum(pos, 0), 1), -np.inf)
        best = score.max(1, keepdims=True)
        # The first key of the best score among the true matches.
        first = np.where(score == best, np.maximum(pos, 0), s.shape[1]).min(1, keepdims=True)
        ahead = (s > best) | ((s == best) & (np.arange(s.shape[1]) < first))
        out[a:a + chunk] = 1 + ahead.sum(1)
    return out


def recall(image_emb: np.ndarray, captions: list[list[str]], embed_texts, ks=(1, 5, 10),
           itm: PairScorer | None = None, rerank_k: int = 16, mesh: Mesh | None = None,
           axes: Sequence[str] = (), scale: float | None = None,
           ranks: dict | None = None) -> dict[str, float]:
    """Recall@k both ways (and after ITM re-ranking with `itm`). With `ranks`, fills it with
    the per-example ranks of the true matches by similarity: `i2t_rank` per image,
    `t2i_rank` per distinct text and the `texts` themselves."""
    texts = sorted({c for caps in captions for c in caps})
    index = {t: j for j, t in enumerate(texts)}
    img_pos = [[index[c] for c in caps] for caps in captions]        # each image's texts
    txt_pos = [[] for _ in texts]                                     # each text's images
    for i, pos in enumerate(img_pos):
        for j in pos:
            txt_pos[j].append(i)
    text_emb = embed_texts(texts)
    depth = max(max(ks), rerank_k if itm is not None else 0)
    i2t = top_k(image_emb, text_emb, depth, mesh, axes)             # nearest texts first
    t2i = top_k(text_emb, image_emb, depth, mesh, axes)             # nearest images first
    orders = {"": (i2t, t2i)}
    if itm is not None and rerank_k > 0:
        i2t_top, t2i_top = i2t[:, :rerank_k], t2i[:, :rerank_k]
        s_i2t = _pair_scores(i2t_top, lambda q, c: itm(texts, q, c))
        s_t2i = _pair_scores(t2i_top, lambda q, c: itm(texts, c, q))
        orders["itm_"] = (_rerank(i2t, s_i2t), _rerank(t2i, s_t2i))
        # BLIP's re-ranking: the ITM score plus the cosine similarity that proposed the pair.
        cos_i2t = cosines(image_emb, text_emb, i2t_top)
        cos_t2i = cosines(text_emb, image_emb, t2i_top)
        orders["itm_sim_"] = (_rerank(i2t, s_i2t + cos_i2t), _rerank(t2i, s_t2i + cos_t2i))
        if scale is not None:
            orders["itm_itc_"] = (_rerank(i2t, s_i2t + scale * cos_i2t),
                                  _rerank(t2i, s_t2i + scale * cos_t2i))
    out, top1 = {}, {}
    for prefix, (a, b) in orders.items():
        for name, order, pos in (("i2t", a, img_pos), ("t2i", b, txt_pos)):
            hits = _hits(order, _padded(pos))
            top1[prefix + name] = hits[:, 0]
            for k in ks:
                out[f"{prefix}{name}_r{k}"] = float(hits[:, :k].any(axis=1).mean())
            if prefix:      # is re-ranking's R@1 gain over similarity more than noise?
                out[f"{prefix}{name}_r1_p"] = stats.mcnemar(top1[prefix + name], top1[name])
        out[f"{prefix}r_mean"] = float(np.mean([out[f"{prefix}{d}_r{k}"] for d in ("i2t", "t2i")
                                                for k in ks]))
    if ranks is not None:
        ranks.update(i2t_rank=true_ranks(image_emb, text_emb, img_pos),
                     t2i_rank=true_ranks(text_emb, image_emb, txt_pos), texts=np.array(texts))
    return out


def usable(data, params, dataset: str) -> tuple[np.ndarray, list[list[str]]]:
    """(which test images take part: read, with captions; their captions)."""
    captions, _ = data.texts(dataset)
    keep = data.images(params, dataset, key="valid") & np.array([bool(c) for c in captions])
    if not keep.any():
        raise ValueError(f"eval set {dataset!r} has no captioned images to retrieve")
    return keep, [c for c, k in zip(captions, keep) if k]


class Evaluator:
    """Image->text and text->image recall@1/5/10 by embedding similarity on a test split, and
    their mean (r_mean), over the images that could be read and have captions."""
    image_keys = ("img/normed",)

    def __init__(self, data, config):
        self.data = data
        # dataset -> the last run's ranks of the true matches (launch.eval --suite saves them)
        self.outputs: dict[str, dict[str, np.ndarray]] = {}

    def run(self, params, dataset: str) -> dict[str, float]:
        emb = self.data.embedder
        keep, captions = usable(self.data, params, dataset)
        ranks = {"index": np.flatnonzero(keep)}
        out = recall(self.data.images(params, dataset)[keep], captions,
                     lambda t: emb.texts(params, t), mesh=emb.mesh, axes=emb.axes, ranks=ranks)
        self.outputs[dataset] = ranks
        return out
