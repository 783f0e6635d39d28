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
    c: LMConfig

    @nn.compact
    def __call__(self, x, positions, mask, local=False):
        c, dt = self.c, jnp.dtype(self.c.dtype)
        init = nn.initializers.normal(0.02)

        def proj(name, heads, axis):
            return nn.DenseGeneral((heads, c.head_dim), name=name, dtype=dt, use_bias=c.qkv_bias,
                                   kernel_init=logical(init, ("embed", axis, "kv")),
                                   bias_init=logical(nn.initializers.zeros, (axis, "kv")))(x)
        q = proj("q", c.heads, "heads")
        k, v = proj("k", c.kv_heads, "kv_heads"), proj("v", c.kv_heads, "kv_heads")
        inv = rope_frequencies(c)
        q, k = apply_rope(q, positions, inv), apply_rope(k, positions, inv)
        y = attend(q, k, v, mask, c, local, positions, positions)
        y = constrain(y, ("batch", "seq", "heads", "kv"))
        return nn.DenseGeneral(c.width, axis=(-2, -1), name="out", dtype=dt, use_bias=False,
                               kernel_init=logical(init, ("heads", "kv", "embed")))(y)


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
    Python bool looped, a scanned input under `nn.scan`."""
    c: LMConfig
    scanned: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, local=False):
        c = self.c

        def norm(name):
            return RMSNorm(c.norm_eps, c.norm_offset, name=name)
        x = constrain(x, ("batch", "seq", "embed"))
        y = Attention(c, name="attn")(norm("ln_attn")(x), positions, mask, local)
        x = x + (norm("ln_attn_post")(y) if c.post_norms else y)
        y = Mlp(c, name="mlp")(norm("ln_mlp")(x))
        x = x + (norm("ln_mlp_post")(y) if c.post_norms else y)
        x = constrain(x, ("batch", "seq", "embed"))
        return (x, None) if self.scanned else x


def local_layers(c: LMConfig) -> tuple[bool, ...]:
    """Which layers attend locally: Gemma 2's even layers, where a window is set."""
    return tuple(bool(c.sliding_window) and i % 2 == 0 for i in range(c.depth))


class LM(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab] (float32), under the mask contract above."""
    c: LMConfig

    @nn.compact
    def __call__(self, ids, input_mask=None, mask_ar=None, segment_ids=None, positions=None):
        c, dt = self.c, jnp.dtype(self.c.dtype)
        input_mask = jnp.ones(ids.shape, bool) if input_mask is None else input_mask
        mask_ar = jnp.ones(ids.shape, jnp.int32) if mask_ar is None else mask_ar
        positions = default_positions(input_mask) if positions is None else positions
        mask = attention_mask(input_mask, mask_ar, segment_ids)
        embed = nn.Embed(c.vocab_size, c.width, name="embed", dtype=dt,
                         embedding_init=logical(nn.initializers.normal(1.0), ("vocab", "embed")))
        x = embed(ids)
        if c.embed_scale:   # Gemma: the scale rounded to the compute dtype, as Hugging Face's
            x = x * jnp.asarray(math.sqrt(c.width), dt)
        x = self.layers(x, positions, mask)
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
        return constrain(logits, ("batch", "seq", "vocab"))

    def layers(self, x, positions, mask):
        c = self.c
        block = rematerialised(Block, c.remat, c.scan)
        local = local_layers(c)
        if c.scan:
            layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(nn.broadcast, nn.broadcast, 0), length=c.depth,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = layers(c, scanned=True, name="blocks")(x, positions, mask,
                                                          jnp.asarray(local))
            return x
        for i in range(c.depth):
            x = block(c, name=f"block{i}")(x, positions, mask, local[i])
        return x
