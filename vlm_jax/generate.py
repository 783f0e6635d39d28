"""Decoding from `models.lm.LM` over a KV cache: one jitted prefill of the prompts, then one
jitted extend step per token. Prompts of different lengths share a batch, left- or
right-padded (`input_mask` marks the real tokens; each row's positions count only those). Greedy,
temperature, top-k and top-p sampling; rows stop at EOS (then emit `pad_id`) or at the length.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlm_jax.models import lm as lm_lib


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0        # 0: greedy
    top_k: int = 0                  # 0: every token
    top_p: float = 1.0              # nucleus: the smallest set of tokens with this much mass


def choose(logits, rng, s: Sampling):
    """[B, V] logits -> [B] token ids."""
    if s.temperature <= 0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    logits = logits / s.temperature
    if s.top_k:
        kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p < 1:
        order = jnp.sort(logits, -1)[:, ::-1]
        mass = jnp.cumsum(jax.nn.softmax(order, -1), -1)
        # The lowest logit kept: the first at which the mass before it reaches top_p.
        cut = jnp.take_along_axis(order, jnp.sum(mass - jax.nn.softmax(order, -1) < s.top_p, -1,
                                                 keepdims=True) - 1, -1)
        logits = jnp.where(logits < cut, -jnp.inf, logits)
    return jax.random.categorical(rng, logits).astype(jnp.int32)


def shard_cache(cache: dict, batch_sharding) -> dict:
    """The cache split over the devices like the batch (rows; keys and values on axis 1)."""
    if batch_sharding is None:
        return cache
    mesh, rows = batch_sharding.mesh, batch_sharding.spec[0]
    spec = lambda name: P(None, rows) if name in ("k", "v") else P() if name == "end" else P(rows)
    return {k: jax.lax.with_sharding_constraint(v, NamedSharding(mesh, spec(k)))
            for k, v in cache.items()}


@functools.partial(jax.jit, static_argnames=("model", "length", "batch_sharding"))
def prefill(model, params, ids, input_mask, length: int, batch_sharding=None):
    """(the logits after each row's last real prompt token [B, V], the cache of `length`
    slots holding the prompts), the cache rows split as `batch_sharding` splits the batch."""
    cache = shard_cache(lm_lib.init_cache(model.c, ids.shape[0], length), batch_sharding)
    logits, cache = model.apply({"params": params}, ids, input_mask, cache=cache)
    cache = shard_cache(cache, batch_sharding)
    last = jnp.max(jnp.where(input_mask, jnp.arange(ids.shape[1]), -1), 1)
    return jnp.take_along_axis(logits, last[:, None, None], 1)[:, 0], cache


@functools.partial(jax.jit, static_argnames=("model",))
def extend(model, params, token, cache):
    """One token per row [B] appended: (its next-token logits [B, V], the cache)."""
    logits, cache = model.apply({"params": params}, token[:, None],
                                jnp.ones((token.shape[0], 1), bool), cache=cache)
    return logits[:, 0], cache


def generate(model, params, ids, input_mask, max_new_tokens: int, *, eos_id: int | None = None,
             pad_id: int = 0, sampling: Sampling = Sampling(), rng=None,
             batch_sharding=None) -> np.ndarray:
    """[B, max_new_tokens] generated ids after the prompts `ids` [B, T]. With
    `batch_sharding` (a NamedSharding of the rows), prompts and cache are split over its
    devices and the params replicated."""
    ids, input_mask = jnp.asarray(ids), jnp.asarray(input_mask, bool)
    if batch_sharding is not None:
        ids, input_mask = (jax.device_put(x, batch_sharding) for x in (ids, input_mask))
        params = jax.device_put(params, NamedSharding(batch_sharding.mesh, P()))
    rng = jax.random.key(0) if rng is None else rng
    logits, cache = prefill(model, params, ids, input_mask, ids.shape[1] + max_new_tokens,
                            batch_sharding)
    done = jnp.zeros(ids.shape[0], bool)
    out = []
    for _ in range(max_new_tokens):
        rng, key = jax.random.split(rng)
        token = jnp.where(done, pad_id, choose(logits, key, sampling))
        out.append(token)
        if eos_id is not None:
            done = done | (token == eos_id)
            if bool(jnp.all(done)):
                break
        logits, cache = extend(model, params, token, cache)
    out = np.asarray(jnp.stack(out, 1))
    return np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])), constant_values=pad_id)


def _rows(cache: dict, rows) -> dict:
    """The cache's batch rows `rows` (keys and values carry the batch on axis 1)."""
    return {k: v if k == "end" else jnp.take(v, rows, axis=1 if k in ("k", "v") else 0)
            for k, v in cache.items()}


@functools.partial(jax.jit, static_argnames=("model", "beams"))
def _beam_step(model, params, tokens, scores, seqs, cache, beams: int):
    logits, cache = extend(model, params, tokens, cache)
    b = scores.shape[0]
    total = scores[:, :, None] + jax.nn.log_softmax(logits, -1).reshape(b, beams, -1)
    scores, flat = jax.lax.top_k(total.reshape(b, -1), beams)
    vocab = logits.shape[-1]
    parent, tokens = flat // vocab, (flat % vocab).astype(jnp.int32)
    rows = (jnp.arange(b)[:, None] * beams + parent).reshape(-1)
    seqs = jnp.concatenate([jnp.take_along_axis(seqs, parent[:, :, None], 1),
                            tokens[:, :, None]], -1)
    return tokens.reshape(-1), scores, seqs, _rows(cache, rows)


def beam_search(model, params, ids, input_mask, max_new_tokens: int, beams: int) -> np.ndarray:
    """[B, max_new_tokens] of each row's most probable continuation among `beams` kept at every
    step (summed log-probabilities; every hypothesis runs to the length, so no length penalty
    applies: Hugging Face's beam search where no beam ends early)."""
    ids, input_mask = jnp.asarray(ids), jnp.asarray(input_mask, bool)
    logits, cache = prefill(model, params, ids, input_mask, ids.shape[1] + max_new_tokens)
    scores, tokens = jax.lax.top_k(jax.nn.log_softmax(logits, -1), beams)      # [B, K]
    b = ids.shape[0]
    cache = _rows(cache, jnp.repeat(jnp.arange(b), beams))
    seqs = tokens[:, :, None].astype(jnp.int32)
    tokens = tokens.reshape(-1).astype(jnp.int32)
    for _ in range(max_new_tokens - 1):
        tokens, scores, seqs, cache = _beam_step(model, params, tokens, scores, seqs, cache,
                                                 beams)
    best = jnp.argmax(scores, -1)
    return np.asarray(jnp.take_along_axis(seqs, best[:, None, None], 1)[:, 0])
