"""Heads on top of the towers: embedding projections, the contrastive scale/bias, the patch
feature predictor."""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models.transformer import Dtype, Mlp, layer_norm, logical


class Projection(nn.Module):
    """Linear map from a tower's width to the shared embedding space (no bias, as in CLIP;
    SigLIP's text head has one)."""
    features: int
    dtype: Dtype = jnp.float32
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype, name="dense",
                        kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", None)),
                        bias_init=logical(nn.initializers.zeros, (None,)))(x)


class ContrastiveScale(nn.Module):
    """The learnable logit scale (and, for sigmoid, bias) of the contrastive losses.

    softmax: s = exp(t), t init log(scale_init), clamped so s <= scale_max.
    sigmoid: s = exp(t), t init log(t_init); bias b init bias_init.
    """
    kind: str                       # softmax | sigmoid
    scale_init: float = 1 / 0.07
    scale_max: float = 100.0
    t_init: float = 10.0
    bias_init: float = -10.0

    @nn.compact
    def __call__(self):
        init = self.scale_init if self.kind == "softmax" else self.t_init
        t = self.param("t", logical(nn.initializers.constant(math.log(init)), ()), ())
        if self.kind == "softmax":
            return {"scale": jnp.exp(jnp.minimum(t, math.log(self.scale_max))),
                    "bias": jnp.zeros((), jnp.float32)}
        b = self.param("b", logical(nn.initializers.constant(self.bias_init), ()), ())
        return {"scale": jnp.exp(t), "bias": b}


class PatchHead(nn.Module):
    """Predicts a teacher's patch features from the student's patch tokens (masked prediction):
    LayerNorm, then an MLP of the tokens' width (iBOT's and TIPS's heads are MLPs too)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return Mlp(x.shape[-1], self.dtype, name="mlp")(layer_norm("ln", self.dtype)(x))
