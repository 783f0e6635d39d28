"""Contrastive image-text objective: softmax (CLIP) or sigmoid (SigLIP), local or global
negatives (losses/contrastive.py)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vlm_jax.losses.contrastive import contrastive_loss
from vlm_jax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class Objective:
    kind: str                       # softmax | sigmoid
    negatives: str                  # local | global
    impl: str = "gather"            # gather | ring (global negatives)
    name = "contrastive"
    cross_example = True
    reads = ("img/normed", "txt/normed", "img/norm", "txt/norm")
    heads = ()

    @classmethod
    def from_config(cls, config, tokenizer=None):
        c = config.contrastive
        return cls(c.name, c.negatives, c.impl)

    def __call__(self, out: dict, batch: dict, ctx=None):
        mesh, axes = sharding.ambient_batch()
        loss, metrics = contrastive_loss(
            self.kind, out["img/normed"], out["txt/normed"], out["scale"], out["bias"],
            negatives=self.negatives, impl=self.impl, mesh=mesh, batch_axes=axes)
        metrics = {**metrics, "img_norm": jnp.mean(out["img/norm"]),
                   "txt_norm": jnp.mean(out["txt/norm"])}
        return loss, metrics
