"""A decoder-only language model: the Llama, Qwen2, Gemma and Gemma 2 families in one module.

RMSNorm (Gemma's `1 + scale` form with `norm_offset`), rotary position embeddings (theta and
Llama 3's frequency scaling), grouped-query attention with optional q/k/v biases (Qwen2),
gated MLPs (SwiGLU, GeGLU), tied or separate output embedding, Gemma's embedding scale, and
Gemma 2's extra norms, attention and final-logit soft-capping and alternating local/global
attention. Params carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `kv`, `mlp`)
for the mesh rules; layers are looped or scanned (`layers` axis) and rematerialised by policy.

The attention mask is an input contract (big_vision's): `input_mask` [B, T] marks real tokens
and `mask_ar` [B, T] is 1 where a causal step starts, so token i sees token j iff
cumsum(mask_ar)[j] <= cumsum(mask_ar)[i] and j is real. All ones is a causal LM; zeros over a
prefix give it full attention (prefix-LM). `segment_ids` [B, T] keep packed sequences apart.
Positions default to cumsum(input_mask) - 1, so left- and right-padded prompts share them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.transformer import constrain, logical, rematerialised

Dtype = Any
GATED = {"silu": nn.silu, "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
         "gelu": lambda x: nn.gelu(x, approximate=False)}


@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    width: int
    depth: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_dim: int
    act: str = "silu"                   # the gate's activation: silu (SwiGLU), gelu_tanh (GeGLU)
    norm_eps: float = 1e-6
    norm_offset: float = 0.0            # Gemma: x * (1 + scale)
    rope_theta: float = 10_000.0
    # Llama 3's frequency scaling: (factor, low_freq_factor, high_freq_factor, original length)
    rope_llama3: tuple = ()
    qkv_bias: bool = False              # Qwen2
    tie_embeddings: bool = False
    embed_scale: bool = False           # Gemma: embeddings times sqrt(width)
    query_scale: float = 0.0            # 0: head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar)
    attn_softcap: float = 0.0           # Gemma 2: tanh soft-capping of the attention logits
    final_softcap: float = 0.0          # Gemma 2: of the output logits
    sliding_window: int = 0             # Gemma 2: local attention on the even layers
    post_norms: bool = False            # Gemma 2: norms after attention and MLP too
    dtype: str = "float32"
    remat: str = "none"
    scan: bool = False

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.act not in GATED:
            raise ValueError(f"LM act {self.act!r}; choose one of {tuple(GATED)}")


class RMSNorm(nn.Module):
    eps: float = 1e-6
    offset: float = 0.0

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", logical(nn.initializers.zeros if self.offset else
                                            nn.initializers.ones, ("embed",)), (x.shape[-1],))
        y = x.astype(jnp.float32)
        y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + self.eps)
        return (y * (self.offset + scale.astype(jnp.float32))).astype(x.dtype)


def rope_frequencies(c: LMConfig) -> jnp.ndarray:
    """[head_dim / 2] inverse frequencies, with Llama 3's scaling where configured."""
    inv = 1.0 / (c.rope_theta ** (jnp.arange(0, c.head_dim, 2, dtype=jnp.float32) / c.head_dim))
    if not c.rope_llama3:
        return inv
    factor, low, high, original = c.rope_llama3
    wavelen = 2 * math.pi / inv
    smooth = (original / wavelen - low) / (high - low)
    scaled = jnp.where(wavelen > original / low, inv / factor, inv)
    mid = (1 - smooth) * inv / factor + smooth * inv
    between = (wavelen <= original / low) & (wavelen >= original / high)
    return jnp.where(between, mid, scaled)


def apply_rope(x, positions, inv_freq):
    """x [B, T, H, D] rotated by position (the two halves of D paired, as Hugging Face's)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq          # [B, T, D/2]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    a, b = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], -1).astype(x.dtype)


def attention_mask(input_mask, mask_ar, segment_ids=None, q_len=None):
    """[B, 1, Q, K] booleans from the mask contract (the last Q of the K positions query)."""
    cum = jnp.cumsum(mask_ar.astype(jnp.int32), axis=1)
    q_len = cum.shape[1] if q_len is None else q_len
    mask = (cum[:, None, :] <= cum[:, -q_len:, None]) & input_mask[:, None, :].astype(bool)
    if segment_ids is not None:
        mask &= segment_ids[:, -q_len:, None] == segment_ids[:, None, :]
    return mask[:, None]


def default_positions(input_mask):
    return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1, 0)


class Attention(nn.Module):
    """Self-attention over the new tokens, or (with `kv`, this layer's cache [B, S, G, D] twice)
    over the cache after writing the new keys and values at slot `end`."""
    c: LMConfig

    @nn.compact
    def __call__(self, x, positions, mask, local=False, kv=None, k_positions=None, end=0):
        c, dt = self.c, jnp.dtype(self.c.dtype)
        init = nn.initializers.normal(0.02)

        # Einsums, not DenseGeneral: its kernel init sees the flattened 2-D shape, which the
        # 3-D logical names could not constrain under a mesh.
        def proj(name, heads, axis):
            return nn.Einsum((c.width, heads, c.head_dim), "btd,dhk->bthk", name=name, dtype=dt,
                             use_bias=c.qkv_bias, kernel_init=logical(init, ("embed", axis, "kv")),
                             bias_init=logical(nn.initializers.zeros, (axis, "kv")))(x)
        q = proj("q", c.heads, "heads")
        k, v = proj("k", c.kv_heads, "kv_heads"), proj("v", c.kv_heads, "kv_heads")
        inv = rope_frequencies(c)
        q, k = apply_rope(q, positions, inv), apply_rope(k, positions, inv)
        if kv is not None:
            write = lambda cache, new: jax.lax.dynamic_update_slice(
                cache, new.astype(cache.dtype), (0, end, 0, 0))
            kv = (write(kv[0], k), write(kv[1], v))
            k, v = kv
        else:
            k_positions = positions
        y = attend(q, k, v, mask, c, local, positions, k_positions)
        y = constrain(y, ("batch", "seq", "heads", "kv"))
        return nn.Einsum((c.heads, c.head_dim, c.width), "bthk,hkd->btd", name="out", dtype=dt,
                         use_bias=False, kernel_init=logical(init, ("heads", "kv", "embed")))(y), kv


def attend(q, k, v, mask, c: LMConfig, local, q_positions, k_positions):
    """Grouped-query attention in float32: q [B, Q, H, D], k/v [B, K, G, D], mask [B, 1, Q, K];
    where `local` (a bool, or traced in a scanned stack) keys `sliding_window` or more
    positions back are masked too."""
    b, tq, h, d = q.shape
    g = k.shape[2]
    q = q.reshape(b, tq, g, h // g, d).astype(jnp.float32)
    scale = c.query_scale or d ** -0.5
    logits = jnp.einsum("bqgrd,bkgd->bgrqk", q * scale, k.astype(jnp.float32))
    if c.attn_softcap:
        logits = c.attn_softcap * jnp.tanh(logits / c.attn_softcap)
    if c.sliding_window:
        near = q_positions[:, :, None] - k_positions[:, None, :] < c.sliding_window
        mask = mask & (near[:, None] | ~jnp.asarray(local))
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum("bgrqk,bkgd->bqgrd", probs, v.astype(jnp.float32))
    return y.reshape(b, tq, h, d).astype(v.dtype)


class Mlp(nn.Module):
    c: LMConfig

    @nn.compact
    def __call__(self, x):
        c, dt = self.c, jnp.dtype(self.c.dtype)
        init = nn.initializers.normal(0.02)

        def dense(name, features, axes):
            return nn.Dense(features, name=name, dtype=dt, use_bias=False,
                            kernel_init=logical(init, axes))
        h = GATED[c.act](dense("gate", c.mlp_dim, ("embed", "mlp"))(x)) * dense(
            "up", c.mlp_dim, ("embed", "mlp"))(x)
        h = constrain(h, ("batch", "seq", "mlp"))
        return dense("down", c.width, ("mlp", "embed"))(h)


class Block(nn.Module):
    """Pre-norm block (Gemma 2: post-norms too). `local` is a layer's sliding-window flag: a
    Python bool looped, a scanned input under `nn.scan`; `kv` its cache (see Attention).
    Returns (x, the updated cache or None)."""
    c: LMConfig

    @nn.compact
    def __call__(self, x, positions, mask, local=False, kv=None, k_positions=None, end=0):
        c = self.c

        def norm(name):
            return RMSNorm(c.norm_eps, c.norm_offset, name=name)
        x = constrain(x, ("batch", "seq", "embed"))
        y, kv = Attention(c, name="attn")(norm("ln_attn")(x), positions, mask, local, kv,
                                          k_positions, end)
        x = x + (norm("ln_attn_post")(y) if c.post_norms else y)
        y = Mlp(c, name="mlp")(norm("ln_mlp")(x))
        x = x + (norm("ln_mlp_post")(y) if c.post_norms else y)
        return constrain(x, ("batch", "seq", "embed")), kv


def local_layers(c: LMConfig) -> tuple[bool, ...]:
    """Which layers attend locally: Gemma 2's even layers, where a window is set."""
    return tuple(bool(c.sliding_window) and i % 2 == 0 for i in range(c.depth))


def init_cache(c: LMConfig, batch: int, length: int, dtype=None) -> dict:
    """An empty KV cache of `length` slots: keys and values [layers, B, S, kv_heads, head_dim]
    and, per slot, whether it holds a real token, its position and its causal step."""
    shape = (c.depth, batch, length, c.kv_heads, c.head_dim)
    dtype = jnp.dtype(dtype or c.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "mask": jnp.zeros((batch, length), bool), "pos": jnp.zeros((batch, length), jnp.int32),
            "step": jnp.zeros((batch, length), jnp.int32), "end": jnp.zeros((), jnp.int32),
            "last_pos": jnp.full((batch,), -1, jnp.int32),
            "last_step": jnp.zeros((batch,), jnp.int32)}


class LM(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab] (float32), under the mask contract above.
    With `cache` (init_cache), the tokens continue the cached ones (slots from `end`) and the
    call returns (logits, the updated cache): one call prefills, then one per decoded token."""
    c: LMConfig

    @nn.compact
    def __call__(self, ids, input_mask=None, mask_ar=None, segment_ids=None, positions=None,
                 cache=None):
        c, dt = self.c, jnp.dtype(self.c.dtype)
        input_mask = jnp.ones(ids.shape, bool) if input_mask is None else input_mask.astype(bool)
        mask_ar = jnp.ones(ids.shape, jnp.int32) if mask_ar is None else mask_ar
        if cache is None:
            positions = default_positions(input_mask) if positions is None else positions
            mask, k_positions, kv = attention_mask(input_mask, mask_ar, segment_ids), None, None
        else:
            if positions is None:
                positions = cache["last_pos"][:, None] + jnp.cumsum(input_mask, 1, jnp.int32)
            step = cache["last_step"][:, None] + jnp.cumsum(mask_ar, 1, jnp.int32)
            end = cache["end"]
            put = lambda a, new: jax.lax.dynamic_update_slice(a, new.astype(a.dtype), (0, end))
            kmask, k_positions, kstep = (put(cache[n], v) for n, v in (
                ("mask", input_mask), ("pos", positions), ("step", step)))
            mask = ((kstep[:, None, :] <= step[:, :, None]) & kmask[:, None, :])[:, None]
            kv = (cache["k"], cache["v"])
        embed = nn.Embed(c.vocab_size, c.width, name="embed", dtype=dt,
                         embedding_init=logical(nn.initializers.normal(1.0), ("vocab", "embed")))
        x = embed(ids)
        if c.embed_scale:   # Gemma: the scale rounded to the compute dtype, as Hugging Face's
            x = x * jnp.asarray(math.sqrt(c.width), dt)
        x, kv = self.layers(x, positions, mask, kv, k_positions,
                            0 if cache is None else cache["end"])
        x = RMSNorm(c.norm_eps, c.norm_offset, name="ln_final")(x)
        if c.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(c.vocab_size, name="lm_head", dtype=dt, use_bias=False,
                              kernel_init=logical(nn.initializers.normal(0.02),
                                                  ("embed", "vocab")))(x)
        logits = logits.astype(jnp.float32)
        if c.final_softcap:
            logits = c.final_softcap * jnp.tanh(logits / c.final_softcap)
        logits = constrain(logits, ("batch", "seq", "vocab"))
        if cache is None:
            return logits
        real = jnp.any(input_mask, 1)
        last = lambda a, old: jnp.where(real, jnp.max(jnp.where(input_mask, a, -1), 1), old)
        return logits, {"k": kv[0], "v": kv[1], "mask": kmask, "pos": k_positions, "step": kstep,
                        "end": cache["end"] + ids.shape[1],
                        "last_pos": last(positions, cache["last_pos"]),
                        "last_step": step[:, -1]}

    def layers(self, x, positions, mask, kv, k_positions, end):
        c = self.c
        block = rematerialised(Block, c.remat, c.scan)
        local = local_layers(c)
        if c.scan:
            layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(nn.broadcast, nn.broadcast, 0, 0, nn.broadcast,
                                      nn.broadcast), length=c.depth,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            return layers(c, name="blocks")(x, positions, mask, jnp.asarray(local), kv,
                                            k_positions, end)
        out_k, out_v = [], []
        for i in range(c.depth):
            layer_kv = None if kv is None else (kv[0][i], kv[1][i])
            x, layer_kv = block(c, name=f"block{i}")(x, positions, mask, local[i], layer_kv,
                                                     k_positions, end)
            if layer_kv is not None:
                out_k.append(layer_kv[0])
                out_v.append(layer_kv[1])
        return x, (jnp.stack(out_k), jnp.stack(out_v)) if out_k else None
