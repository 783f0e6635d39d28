"""Objectives: which losses run, their weights over the run, and the metrics they log.

One module per objective, named for its config section, which is also its metric prefix
(`contrastive`, `itm`, `mlm`, `mim`, `caption`). Each defines

    @dataclasses.dataclass(frozen=True)
    class Objective:
        name = "itm"                # module = config section = metric prefix
        cross_example = True        # compares examples across the batch
        reads = None                # per-example tower outputs a cross-example objective reads,
                                    # which micro-batching gathers; None: not micro-batchable
        heads = ("itm_logits",)     # model heads it calls through ctx.call
        @classmethod
        def from_config(cls, config, tokenizer) -> "Objective": ...
        @staticmethod
        def check(config) -> None: ...   # optional: its config rules (raise ConfigError)
        def __call__(self, out, batch, ctx) -> tuple[loss, metrics]: ...

The model builds the heads the enabled objectives declare, micro-batching (train/accumulate.py)
follows `cross_example` and `reads`, and the config section needs `weight` and `schedule` (see
config.py). Objectives take the mesh from the context (`jax.set_mesh`) and the batch axes from
the logical rules. The total is

    sum_k w_k(step) * loss_k        (with balancing: loss_k / stop_gradient(running mean of loss_k))

An objective whose schedule is 0 at a step is not computed there: the trainer runs the step
program built without it (`off_at`, `switch_off`), its metrics NaN.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import config as config_lib
from vlm_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Context:
    """What an objective may use beyond the tower outputs and the batch."""
    call: Callable[..., Any] | None = None   # call(method name, *args) with this step's params
    rng: jax.Array | None = None             # this objective's randomness at this step
    percent: Any = 0.0                       # how far the run is, in percent of its steps
    teacher: Callable[..., Any] | None = None  # as call, with the EMA teacher's params (no gradient)


def objective_class(section: str):
    """The Objective class of module vlm_jax.objectives.<section>."""
    if section not in config_lib.OBJECTIVES:
        raise ConfigError(f"unknown objective {section!r}; choose from {config_lib.OBJECTIVES}")
    return importlib.import_module(f"vlm_jax.objectives.{section}").Objective


def names(config) -> list[str]:
    """The enabled objectives (weight > 0), in OBJECTIVES order: their config sections, which
    are also the names they log under."""
    return [s for s in config_lib.OBJECTIVES if config[s].weight > 0]


def heads(config) -> frozenset[str]:
    """The model heads the enabled objectives call."""
    return frozenset(h for s in names(config) for h in objective_class(s).heads)


def check(config) -> None:
    """Each enabled objective's own config rules."""
    for section in names(config):
        getattr(objective_class(section), "check", lambda c: None)(config)


@dataclasses.dataclass(frozen=True)
class Weighted:
    objective: Any
    weight: float
    schedule: tuple = ()            # ((step, factor), ...), piecewise linear
    total_steps: int = 1
    off: bool = False               # not computed: its schedule is 0 at the program's steps

    def zero_at(self, step: int) -> bool:
        """Whether the schedule's factor is 0 at `step` (on the host)."""
        if not self.schedule:
            return False
        xs, ys = (np.asarray(v, np.float32) for v in zip(*self.schedule))
        return float(np.interp(np.float32(step), xs, ys)) == 0.0

    def at(self, step):
        if not self.schedule:
            return jnp.float32(self.weight)
        xs, ys = zip(*self.schedule)
        return self.weight * jnp.interp(jnp.asarray(step, jnp.float32),
                                        jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32))


def build(config, tokenizer=None, total_steps: int = 1) -> list[Weighted]:
    """The config's objectives with weight > 0, in `OBJECTIVES` order; schedules are given in
    percent of the run and turned into steps here."""
    check(config)
    out = []
    for section in names(config):
        c = config[section]
        schedule = tuple((p / 100 * total_steps, f) for p, f in c.schedule)
        out.append(Weighted(objective_class(section).from_config(config, tokenizer), c.weight,
                            schedule, total_steps))
    return out


def off_at(objectives: Sequence[Weighted], step: int) -> frozenset[str]:
    """The objectives whose schedule is 0 at `step`: the train step for it leaves them out."""
    return frozenset(w.objective.name for w in objectives if w.zero_at(step))


def switch_off(objectives: Sequence[Weighted], off: frozenset[str]) -> list[Weighted]:
    """The objectives with those named in `off` not computed (loss 0, metrics NaN)."""
    return [dataclasses.replace(w, off=w.objective.name in off) for w in objectives]


def total_loss(objectives: Sequence[Weighted], out: dict, batch: dict, *, call=None, rng=None,
               step=0, running=None, decay: float = 0.99, teacher=None):
    """(total, metrics, running means). Metrics are keyed '<objective>/<metric>' plus 'loss'.

    `running` ({name: raw EMA}, or None to not balance) turns on balancing: each loss is divided
    by the stop-gradient of its bias-corrected EMA, this step's loss included."""
    total, metrics, new_running = 0.0, {}, {}
    for i, w in enumerate(objectives):
        obj = w.objective
        ctx = Context(call, None if rng is None else jax.random.fold_in(rng, i),
                      100.0 * jnp.asarray(step, jnp.float32) / w.total_steps, teacher)
        weight = w.at(step)
        if w.off:
            m = _off(lambda obj=obj, ctx=ctx: obj(out, batch, ctx))
            metrics.update({f"{obj.name}/{k}": v for k, v in m.items()})
            metrics[f"{obj.name}/weight"] = weight
            if running is not None:
                new_running[obj.name] = running[obj.name]
            continue
        loss, m = obj(out, batch, ctx)
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


def _off(run):
    """The metrics of an objective that is off, without computing it: each NaN (0 where not a
    float), its loss included; the means over logged steps leave them out."""
    loss, m = jax.eval_shape(run)
    fill = lambda x: jnp.full(x.shape, jnp.nan if jnp.issubdtype(x.dtype, jnp.inexact) else 0,
                              x.dtype)
    return {"loss": fill(loss), **jax.tree.map(fill, m)}
