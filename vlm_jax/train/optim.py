"""The optimizer: AdamW with warmup + cosine, global-norm clipping, and rules over param paths.

`optim.freeze_rules` decide which params train (frozen ones get no Adam moments and a zero
update), `optim.wd_rules` multiply the weight decay per param, and `optim.lr_rules` the learning
rate. Weight decay is decoupled and scaled by the learning rate, as in optax.adamw / PyTorch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlm_jax import rules


def schedule(config, total_steps: int, warmup_steps: int) -> optax.Schedule:
    o = config.optim
    end = o.lr * o.end_lr_ratio
    if warmup_steps >= total_steps:
        raise ValueError(f"warm-up ({warmup_steps} steps) must be shorter than the run "
                         f"({total_steps} steps)")
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(o.lr, total_steps, alpha=o.end_lr_ratio)
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup_steps, total_steps, end)


def _skip_masked(fn):
    """Applies fn leafwise, leaving optax.partition's MaskedNode placeholders alone."""
    def apply(value, update, *rest):
        return update if isinstance(update, optax.MaskedNode) else fn(value, update, *rest)
    return apply


def scale_by_tree(factors) -> optax.GradientTransformation:
    """Multiplies each update by its param's factor (a tree of floats like the params)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(_skip_masked(lambda f, u: u * f if f != 1.0 else u), factors, updates), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def add_decayed_weights_tree(rates) -> optax.GradientTransformation:
    """update += rate * param, with a per-param rate (a tree of floats like the params)."""
    def update(updates, state, params):
        return jax.tree.map(_skip_masked(lambda r, u, p: u + r * p if r else u),
                            rates, updates, params), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def build(config, params, total_steps: int, warmup_steps: int):
    """(optax transformation, learning-rate schedule) for `params` (arrays or shapes)."""
    o = config.optim
    sched = schedule(config, total_steps, warmup_steps)
    frozen = rules.tree_map_rules(o.freeze_rules, params, "freeze")
    wd = jax.tree.map(lambda m: o.weight_decay * float(m),
                      rules.tree_map_rules(o.wd_rules, params, "weight-decay"))
    lr_mult = jax.tree.map(float, rules.tree_map_rules(o.lr_rules, params, "learning-rate"))
    train = optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
        optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=jnp.dtype(o.mu_dtype)),
        add_decayed_weights_tree(wd),
        optax.scale_by_learning_rate(sched),
        scale_by_tree(lr_mult),
    )
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    return optax.partition({"train": train, "frozen": optax.set_to_zero()}, labels), sched


def _rule_sets(config):
    o = config.optim
    return ((o.freeze_rules, "freeze"), (o.wd_rules, "weight-decay"),
            (o.lr_rules, "learning-rate"))


def describe(config, params) -> list[str]:
    """Which rule matched each param (the workdir's rule table)."""
    return [line for r, what in _rule_sets(config) for line in rules.describe(r, params, what)]


def summary(config, params) -> list[str]:
    """How many params each rule took (the console's short form of `describe`)."""
    return [line for r, what in _rule_sets(config) for line in rules.summary(r, params, what)]
