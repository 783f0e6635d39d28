"""LocCa's grounding tasks (data/regions.py): referring expressions (a region's description ->
its box as coordinate tokens) and grounded captions (box -> description), each a next-token
cross-entropy of the captioner (causal text tower and caption decoder) on the task's target
tokens, given the image tokens. Examples without a region in view score nothing."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vlm_jax.data.regions import TASKS
from vlm_jax.objectives.caption import needs_causal_text


@dataclasses.dataclass(frozen=True)
class Objective:
    name = "grounding"
    cross_example = False
    reads = ()
    heads = ("caption_logits",)

    @classmethod
    def from_config(cls, config, tokenizer=None):
        return cls()

    @staticmethod
    def check(config) -> None:
        needs_causal_text(config, "grounding")

    def __call__(self, out: dict, batch: dict, ctx):
        valid = batch["region_valid"]
        losses, metrics = [], {"valid_share": valid.mean()}
        for task in TASKS:
            tokens, mask = batch[f"{task}_tokens"], batch[f"{task}_mask"]
            txt = ctx.call("encode_text", tokens, mask)["txt/tokens"]
            nll, hit = ctx.call("caption_logits", txt, mask, out["img/tokens"], tokens[:, 1:])
            w = (batch[f"{task}_targets"][:, 1:] & valid[:, None]).astype(jnp.float32)
            n = jnp.maximum(w.sum(), 1.0)
            losses.append((nll * w).sum() / n)
            metrics[f"{task}_loss"] = losses[-1]
            metrics[f"{task}_accuracy"] = (hit * w).sum() / n
            if task == "ref":   # all four coordinates right (the targets' first four tokens)
                first4 = w * (jnp.cumsum(w, axis=1) <= 4)
                whole = jnp.all((hit > 0) | (first4 == 0), axis=1) & valid
                metrics["ref_box_exact"] = whole.sum() / jnp.maximum(valid.sum(), 1)
        loss = sum(losses) / len(losses)
        return loss, {"loss": loss, **metrics}
