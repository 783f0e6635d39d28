"""Objectives: which losses run, their weights over the run, and the metrics they log.

An objective is a callable `(model outputs, batch, context) -> (loss, metrics)` with a name.
The outputs are the towers' (`model.apply` on the batch); an objective that needs more of the
model (the fusion encoder, a decoder) calls a model method through `context.call`. The total is

    sum_k w_k(step) * loss_k        (with balancing: loss_k / stop_gradient(running mean of loss_k))

Adding an objective means a loss in `losses/`, a class here, a config section and, if it needs
one, a model method.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vlm_jax.config import OBJECTIVES
from vlm_jax.losses.caption import caption_loss
from vlm_jax.losses.contrastive import contrastive_loss
from vlm_jax.losses.itm import itm_loss, mine_negatives
from vlm_jax.losses.masked import mim_loss, mim_mask, mlm_loss, mlm_mask
from vlm_jax.models.vlm import pixels
from vlm_jax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class Context:
    """What an objective may use beyond the tower outputs and the batch."""
    call: Callable[..., Any] | None = None   # call(method name, *args) with this step's params
    rng: jax.Array | None = None             # this objective's randomness at this step


@dataclasses.dataclass(frozen=True)
class Contrastive:
    kind: str                       # softmax | sigmoid
    negatives: str                  # local | global
    impl: str = "gather"            # gather | ring (global negatives)
    mesh: Mesh | None = None
    batch_axes: Sequence[str] = ("data",)
    name: str = "contrastive"
    cross_example = True            # compares examples across the batch (see train/accumulate.py)

    def __call__(self, out: dict, batch: dict, ctx: Context = Context()):
        loss, metrics = contrastive_loss(
            self.kind, out["img/normed"], out["txt/normed"], out["scale"], out["bias"],
            negatives=self.negatives, impl=self.impl, mesh=self.mesh, batch_axes=self.batch_axes)
        metrics = {**metrics, "img_norm": jnp.mean(out["img/norm"]),
                   "txt_norm": jnp.mean(out["txt/norm"])}
        return loss, metrics


def match_groups(batch: dict):
    """Examples that match each other's captions: the same class label where the data has one
    (label >= 0), else the very same caption (a 30-bit hash of its ids, kept apart from labels)."""
    tokens = batch["tokens"]
    weights = jnp.asarray(np.random.default_rng(0).integers(1, 2**31 - 1, tokens.shape[1]),
                          jnp.uint32)
    caption = ((tokens.astype(jnp.uint32) * weights).sum(axis=1) >> 2).astype(jnp.int32)
    label = batch.get("label", jnp.full(tokens.shape[:1], -1, jnp.int32))
    return jnp.where(label >= 0, label, caption | (1 << 30))


@dataclasses.dataclass(frozen=True)
class Itm:
    """Image-text matching on b positives, b hard-negative texts and b hard-negative images."""
    negatives: str = "global"
    mesh: Mesh | None = None
    batch_axes: Sequence[str] = ("data",)
    name: str = "itm"
    cross_example = True

    def __call__(self, out: dict, batch: dict, ctx: Context):
        neg_txt, neg_img = mine_negatives(
            ctx.rng, out["img/normed"], out["txt/normed"], out["scale"], negatives=self.negatives,
            mesh=self.mesh, batch_axes=self.batch_axes, groups=match_groups(batch))
        img, txt, mask = out["img/tokens"], out["txt/tokens"], batch["mask"]
        pos = ctx.call("itm_logits", txt, mask, img)
        neg_t = ctx.call("itm_logits", txt[neg_txt], mask[neg_txt], img)
        neg_i = ctx.call("itm_logits", txt, mask, img[neg_img])
        return itm_loss(pos, neg_t, neg_i)


@dataclasses.dataclass(frozen=True)
class Mlm:
    """Masked language modelling through the fusion encoder, the image in context."""
    mask_id: int
    vocab_size: int
    first_regular: int = 0          # random replacements are drawn from [first_regular, vocab)
    keep: tuple[int, ...] = ()      # ids never chosen (BOS, EOS)
    rate: float = 0.15
    name: str = "mlm"
    cross_example = False

    def mask(self, rng, tokens, mask):
        """(inputs with the chosen tokens replaced, chosen positions), as in training."""
        return mlm_mask(rng, tokens, mask, mask_id=self.mask_id, vocab_size=self.vocab_size,
                        first_regular=self.first_regular, keep=self.keep, rate=self.rate)

    def __call__(self, out: dict, batch: dict, ctx: Context):
        inputs, chosen = self.mask(ctx.rng, batch["tokens"], batch["mask"])
        logits = ctx.call("mlm_logits", inputs, batch["mask"], out["img/tokens"])
        return mlm_loss(logits, batch["tokens"], chosen)


@dataclasses.dataclass(frozen=True)
class Mim:
    """MAE: the image tower sees (1 - ratio) of the patches; the decoder predicts the rest."""
    patch: int
    ratio: float = 0.75
    norm_pix: bool = True
    pixel_norm: str = "unit"
    name: str = "mim"
    cross_example = False

    def __call__(self, out: dict, batch: dict, ctx: Context):
        images = batch["image"]
        n = (images.shape[1] // self.patch) * (images.shape[2] // self.patch)
        visible, masked = mim_mask(ctx.rng, images.shape[0], n, self.ratio)
        pred = ctx.call("mim_pixels", images, visible)
        return mim_loss(pred, pixels(images, self.pixel_norm), masked, self.patch, self.norm_pix)


@dataclasses.dataclass(frozen=True)
class Caption:
    """CoCa captioning: the causal text tower's tokens, decoded against the image tokens."""
    name: str = "caption"
    cross_example = False

    def __call__(self, out: dict, batch: dict, ctx: Context):
        logits = ctx.call("caption_logits", out["txt/tokens"], batch["mask"], out["img/tokens"])
        return caption_loss(logits, batch["tokens"], batch["mask"])


@dataclasses.dataclass(frozen=True)
class Weighted:
    objective: Any
    weight: float
    schedule: tuple = ()            # ((step, factor), ...), piecewise linear

    def at(self, step):
        if not self.schedule:
            return jnp.float32(self.weight)
        xs, ys = zip(*self.schedule)
        return self.weight * jnp.interp(jnp.asarray(step, jnp.float32), jnp.asarray(xs, jnp.float32),
                                        jnp.asarray(ys, jnp.float32))


def mlm_objective(config, tokenizer) -> Mlm:
    mask_id = getattr(tokenizer, "mask_id", None)
    if mask_id is None:
        raise ValueError(f"mlm.weight > 0 needs a [MASK] token, and tokenizer "
                         f"{config.tokenizer.path or config.tokenizer.name!r} has none")
    keep = tuple(i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None)
    return Mlm(mask_id, tokenizer.vocab_size, getattr(tokenizer, "offset", 0), keep,
               config.mlm.rate)


def build(config, mesh: Mesh | None, tokenizer=None, total_steps: int = 1) -> list[Weighted]:
    """The config's objectives with weight > 0, in `OBJECTIVES` order; schedules are given in
    percent of the run and turned into steps here."""
    axes = sharding.batch_axes(sharding.logical_rules(config)) if mesh is not None else ()
    make = {
        "loss": lambda: Contrastive(config.loss.name, config.loss.negatives, config.loss.impl,
                                    mesh, axes),
        "itm": lambda: Itm(config.itm.negatives, mesh, axes),
        "mlm": lambda: mlm_objective(config, tokenizer),
        "mim": lambda: Mim(config.model.image.patch_size, config.mim.ratio, config.mim.norm_pix,
                           config.model.image.pixel_norm),
        "caption": lambda: Caption(),
    }
    out = []
    for section in OBJECTIVES:
        c = config[section]
        if c.weight > 0:
            schedule = tuple((p / 100 * total_steps, f) for p, f in c.schedule)
            out.append(Weighted(make[section](), c.weight, schedule))
    return out


def names(config) -> list[str]:
    """The names the enabled objectives log under (no tokenizer or mesh needed)."""
    short = {"loss": "contrastive"}
    return [short.get(s, s) for s in OBJECTIVES if config[s].weight > 0]


def total_loss(objectives: Sequence[Weighted], out: dict, batch: dict, *, call=None, rng=None,
               step=0, running=None, decay: float = 0.99):
    """(total, metrics, running means). Metrics are keyed '<objective>/<metric>' plus 'loss'.

    `running` ({name: raw EMA}, or None to not balance) turns on balancing: each loss is divided
    by the stop-gradient of its bias-corrected EMA, this step's loss included."""
    total, metrics, new_running = 0.0, {}, {}
    for i, w in enumerate(objectives):
        obj = w.objective
        ctx = Context(call, None if rng is None else jax.random.fold_in(rng, i))
        loss, m = obj(out, batch, ctx)
        weight = w.at(step)
        term = loss
        if running is not None:
            ema = decay * running[obj.name] + (1 - decay) * jax.lax.stop_gradient(loss)
            new_running[obj.name] = ema
            term = loss / jax.lax.stop_gradient(ema / (1 - decay ** (step + 1.0)))
        total = total + weight * term
        metrics[f"{obj.name}/loss"] = loss
        metrics[f"{obj.name}/weight"] = weight
        metrics.update({f"{obj.name}/{k}": v for k, v in m.items() if k != "loss"})
    metrics["loss"] = total
    return total, metrics, new_running
