"""CoCa captioning: the causal text tower's tokens, decoded against the image tokens
(losses/caption.py)."""
from __future__ import annotations

import dataclasses

from vlm_jax.config import ConfigError
from vlm_jax.losses.caption import caption_loss


def needs_causal_text(config, section: str) -> None:
    """The captioner (causal text tower and caption decoder) decodes `section`'s tokens."""
    if not config.model.text.causal:
        raise ConfigError(f"'{section}.weight' > 0 needs model.text.causal=True: a bidirectional "
                          "text tower would show the captioner the tokens it predicts")


@dataclasses.dataclass(frozen=True)
class Objective:
    name = "caption"
    cross_example = False
    reads = ()
    heads = ("caption_logits",)

    @classmethod
    def from_config(cls, config, tokenizer=None):
        return cls()

    @staticmethod
    def check(config) -> None:
        needs_causal_text(config, "caption")

    def __call__(self, out: dict, batch: dict, ctx):
        nll, hit = ctx.call("caption_logits", out["txt/tokens"], batch["mask"],
                            out["img/tokens"], batch["tokens"][:, 1:])
        return caption_loss(nll, hit, batch["mask"])
