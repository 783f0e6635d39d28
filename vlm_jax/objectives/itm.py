"""Image-text matching on b positives, b hard-negative texts and b hard-negative images
(ALBEF; losses/itm.py), through the fusion encoder."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.losses.itm import itm_loss, mine_negatives
from vlm_jax.parallel import rows, sharding


def match_groups(batch: dict, by: str = "label"):
    """Examples that match each other's captions: by 'label' (or 'scene', whose labels the
    pipeline made hashes of the caption sets), the same label where the data has one (>= 0);
    else (or by 'caption') the very same caption (a 30-bit hash of its ids, kept apart from
    labels)."""
    tokens = batch["tokens"]
    weights = jnp.asarray(np.random.default_rng(0).integers(1, 2**31 - 1, tokens.shape[1]),
                          jnp.uint32)
    caption = ((tokens.astype(jnp.uint32) * weights).sum(axis=1) >> 2).astype(jnp.int32)
    label = batch.get("label", jnp.full(tokens.shape[:1], -1, jnp.int32))
    if by == "caption":
        return caption | (1 << 30)
    return jnp.where(label >= 0, label, caption | (1 << 30))


@dataclasses.dataclass(frozen=True)
class Objective:
    negatives: str = "global"       # mined within the shard (local) or the whole batch (global)
    remat: bool = False             # recompute each set of pairs from its inputs when backward
    groups: str = "label"           # what makes two examples match (match_groups)
    hardness: float = 1.0           # the mining temperature's multiplier: 0 draws uniformly
    hardness_schedule: tuple = ()   # ((percent of the run, factor), ...) on `hardness`
    name = "itm"
    cross_example = True
    reads = None                    # mines and fuses across the batch: not micro-batchable
    heads = ("itm_logits",)

    @classmethod
    def from_config(cls, config, tokenizer=None):
        i = config.itm
        return cls(i.negatives, config.model.remat != "none", i.groups, i.hardness,
                   tuple(tuple(map(float, p)) for p in i.hardness_schedule))

    def hardness_at(self, percent):
        if not self.hardness_schedule:
            return jnp.float32(self.hardness)
        xs, ys = zip(*self.hardness_schedule)
        return self.hardness * jnp.interp(percent, jnp.asarray(xs, jnp.float32),
                                          jnp.asarray(ys, jnp.float32))

    def __call__(self, out: dict, batch: dict, ctx):
        mesh, axes = sharding.ambient_batch()
        neg_txt, neg_img = mine_negatives(
            ctx.rng, out["img/normed"], out["txt/normed"], self.hardness_at(ctx.percent) * out["scale"],
            negatives=self.negatives,
            mesh=mesh, batch_axes=axes, groups=match_groups(batch, self.groups))
        img, txt, mask = out["img/tokens"], out["txt/tokens"], batch["mask"]
        # The negatives' token rows come from whichever shard holds them, one shard's block at
        # a time (rows.take): never the whole batch's tokens on every chip.
        take = lambda xs, index: rows.take(xs, index, mesh=mesh, batch_axes=axes,
                                           local=self.negatives == "local")
        txt_neg, mask_neg = take((txt, mask), neg_txt)
        img_neg, = take((img,), neg_img)
        # The three sets of pairs through one fusion encoder, one set after the other (a loop:
        # one encoder in the program, and one set's activations alive at a time in the
        # backward pass, where all three at once were ALBEF's largest working set). Under a
        # remat policy each set keeps only its inputs until its backward pass (the fusion
        # blocks' own saved inputs were 0.45 GiB per chip at 128 B/16 examples).
        fuse = lambda a: ctx.call("itm_logits", *a)
        stack = lambda *xs: jnp.stack(xs)
        pos, neg_t, neg_i = jax.lax.map(jax.checkpoint(fuse) if self.remat else fuse, (
            stack(txt, txt_neg, txt), stack(mask, mask_neg, mask), stack(img, img, img_neg)))
        return itm_loss(pos, neg_t, neg_i)
