"""Objectives: which losses run, their weights, and the metrics they log.

An objective is a callable `(model outputs, batch) -> (loss, metrics)` with a name; the total
loss is the weighted sum. Adding an objective means a loss in `losses/`, a class here and a
config entry.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
from jax.sharding import Mesh

from vlm_jax.losses.contrastive import contrastive_loss
from vlm_jax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class Contrastive:
    kind: str                       # softmax | sigmoid
    negatives: str                  # local | global
    impl: str = "gather"            # gather | ring (global negatives)
    mesh: Mesh | None = None
    batch_axes: Sequence[str] = ("data",)
    name: str = "contrastive"

    def __call__(self, out: dict, batch: dict):
        loss, metrics = contrastive_loss(
            self.kind, out["img/normed"], out["txt/normed"], out["scale"], out["bias"],
            negatives=self.negatives, impl=self.impl, mesh=self.mesh, batch_axes=self.batch_axes)
        metrics = {**metrics, "img_norm": jnp.mean(out["img/norm"]),
                   "txt_norm": jnp.mean(out["txt/norm"])}
        return loss, metrics


def build(config, mesh: Mesh | None) -> list[tuple[object, float]]:
    axes = sharding.batch_axes(sharding.logical_rules(config)) if mesh is not None else ()
    loss = config.loss
    return [(Contrastive(loss.name, loss.negatives, loss.impl, mesh, axes), 1.0)]


def total_loss(objectives, out: dict, batch: dict):
    """(weighted total, metrics keyed '<objective>/<metric>' plus 'loss')."""
    total, metrics = 0.0, {}
    for objective, weight in objectives:
        loss, m = objective(out, batch)
        total = total + weight * loss
        metrics[f"{objective.name}/loss"] = loss
        metrics.update({f"{objective.name}/{k}": v for k, v in m.items()})
    metrics["loss"] = total
    return total, metrics
