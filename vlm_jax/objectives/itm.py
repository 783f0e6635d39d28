"""Image-text matching on b positives, b hard-negative texts and b hard-negative images
(ALBEF; losses/itm.py), through the fusion encoder. With `itm.text_negatives` a share of the
images take one of their own negative captions (false of them by construction: NegCLIP's swaps)
as their non-matching text instead of the mined one."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.losses.itm import threefry, itm_loss, mine_negatives
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
    text_negatives: float = 0.0     # share of images whose negative text is their own negative
    text_negatives_schedule: tuple = ()     # caption where they have one, and its curriculum
    name = "itm"
    cross_example = True
    reads = None                    # mines and fuses across the batch: not micro-batchable
    heads = ("itm_logits",)

    @classmethod
    def from_config(cls, config, tokenizer=None):
        i = config.itm
        points = lambda schedule: tuple(tuple(map(float, p)) for p in schedule)
        return cls(i.negatives, config.model.remat != "none", i.groups, i.hardness,
                   points(i.hardness_schedule), i.text_negatives,
                   points(i.text_negatives_schedule))

    def hardness_at(self, percent):
        return _scheduled(self.hardness, self.hardness_schedule, percent)

    def text_negatives_at(self, percent):
        return _scheduled(self.text_negatives, self.text_negatives_schedule, percent)

    def __call__(self, out: dict, batch: dict, ctx):
        mesh, axes = sharding.ambient_batch()
        neg_txt, neg_img = mine_negatives(
            ctx.rng, out["img/normed"], out["txt/normed"], self.hardness_at(ctx.percent) * out["scale"],
            negatives=self.negatives,
            mesh=mesh, batch_axes=axes, groups=match_groups(batch, self.groups),
            views=batch.get("colourless"))
        img, txt, mask = out["img/tokens"], out["txt/tokens"], batch["mask"]
        # The negatives' token rows come from whichever shard holds them, one shard's block at
        # a time (rows.take): never the whole batch's tokens on every chip.
        take = lambda xs, index: rows.take(xs, index, mesh=mesh, batch_axes=axes,
                                           local=self.negatives == "local")
        txt_neg, mask_neg = take((txt, mask), neg_txt)
        img_neg, = take((img,), neg_img)
        own = None
        if "neg_tokens" in batch:       # some images' own negative captions replace the mined
            key = jax.random.fold_in(threefry(ctx.rng), 1)     # the same draws on any mesh
            draw = jax.random.uniform(key, batch["neg_valid"].shape)
            own = batch["neg_valid"] & (draw < self.text_negatives_at(ctx.percent))
            own_txt = ctx.call("encode_text", batch["neg_tokens"], batch["neg_mask"])["txt/tokens"]
            txt_neg = jnp.where(own[:, None, None], own_txt.astype(txt_neg.dtype), txt_neg)
            mask_neg = jnp.where(own[:, None], batch["neg_mask"], mask_neg)
        # The three sets of pairs through one fusion encoder, one set after the other (a loop:
        # one encoder in the program, and one set's activations alive at a time in the
        # backward pass, where all three at once were ALBEF's largest working set). Under a
        # remat policy each set keeps only its inputs until its backward pass (the fusion
        # blocks' own saved inputs were 0.45 GiB per chip at 128 B/16 examples).
        fuse = lambda a: ctx.call("itm_logits", *a)
        stack = lambda *xs: jnp.stack(xs)
        pos, neg_t, neg_i = jax.lax.map(jax.checkpoint(fuse) if self.remat else fuse, (
            stack(txt, txt_neg, txt), stack(mask, mask_neg, mask), stack(img, img, img_neg)))
        return itm_loss(pos, neg_t, neg_i, own)


def _scheduled(value, schedule, percent):
    """`value` times the curriculum's factor at `percent` of the run (constant without one)."""
    if not schedule:
        return jnp.float32(value)
    xs, ys = zip(*schedule)
    return value * jnp.interp(percent, jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32))
