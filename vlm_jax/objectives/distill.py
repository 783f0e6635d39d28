"""Self-distillation (SILC): the student's image embedding of a local crop (data/images.py:
render_local) is pulled towards the EMA teacher's embedding of the training view (the whole
image): local-to-global correspondence. The loss is the cosine distance of the two normalised
embeddings, averaged over the batch. SILC (after DINO) compares softmax distributions over
learned prototypes, with the teacher's centred and sharpened; the cosine form needs neither, and
the contrastive loss beside it keeps the embeddings from collapsing. Needs the teacher
(`teacher.momentum` > 0)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vlm_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Objective:
    name = "distill"
    cross_example = False
    reads = ()
    heads = ()

    @classmethod
    def from_config(cls, config, tokenizer=None):
        return cls()

    @staticmethod
    def check(config) -> None:
        if config.teacher.momentum <= 0:
            raise ConfigError("'distill.weight' > 0 needs the EMA teacher (teacher.momentum > 0)")
        lo, hi = config.distill.local_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"'distill.local_scale' must be 0 < min <= max <= 1, got {(lo, hi)}")

    def __call__(self, out: dict, batch: dict, ctx):
        student = ctx.call("encode_image", batch["local_image"])["img/normed"]
        teacher = ctx.teacher("encode_image", batch["image"])["img/normed"]
        cos = jnp.sum(student * teacher, axis=-1)
        loss = jnp.mean(1 - cos)
        return loss, {"loss": loss, "cosine": 1 - loss}
