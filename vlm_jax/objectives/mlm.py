"""Masked language modelling through the fusion encoder, the image in context (losses/masked.py)."""
from __future__ import annotations

import dataclasses

from vlm_jax.config import ConfigError
from vlm_jax.losses.masked import mlm_mask, token_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    mask_id: int
    vocab_size: int
    first_regular: int = 0          # random replacements are drawn from [first_regular, vocab)
    keep: tuple[int, ...] = ()      # ids never chosen (BOS, EOS)
    rate: float = 0.15
    name = "mlm"
    cross_example = False
    reads = ()
    heads = ("mlm_logits",)

    @classmethod
    def from_config(cls, config, tokenizer):
        mask_id = tokenizer.mask_id
        if mask_id is None:
            raise ConfigError(f"mlm.weight > 0 needs a [MASK] token, and tokenizer "
                              f"{config.tokenizer.path or config.tokenizer.name!r} has none")
        keep = tuple(i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None)
        return cls(mask_id, tokenizer.vocab_size, getattr(tokenizer, "offset", 0), keep,
                   config.mlm.rate)

    @staticmethod
    def check(config) -> None:
        if not 0 < config.mlm.rate < 1:
            raise ConfigError(f"'mlm.rate' must lie strictly between 0 and 1, "
                              f"got {config.mlm.rate}")

    def mask(self, rng, tokens, mask):
        """(inputs with the chosen tokens replaced, chosen positions), as in training."""
        return mlm_mask(rng, tokens, mask, mask_id=self.mask_id, vocab_size=self.vocab_size,
                        first_regular=self.first_regular, keep=self.keep, rate=self.rate)

    def __call__(self, out: dict, batch: dict, ctx):
        inputs, chosen = self.mask(ctx.rng, batch["tokens"], batch["mask"])
        nll, hit = ctx.call("mlm_logits", inputs, batch["mask"], out["img/tokens"],
                            batch["tokens"])
        return token_loss(nll, hit, chosen)
