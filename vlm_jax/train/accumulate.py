"""Gradients of one batch computed in k sequential micro-batches, with every negative kept.

Objectives that compare examples across the batch (contrastive) need the whole batch's
embeddings. GradCache (Gao et al., 2021) splits the work so that only one micro-batch's
activations are alive at a time, and still computes the exact full-batch gradient:

1. embed every micro-batch, no gradients kept (one forward pass each);
2. on the full batch of embeddings: the contrastive loss, its gradient with respect to each
   embedding, and its gradient with respect to the params it reads directly (scale, bias);
3. re-run each micro-batch's forward pass with its VJP, pulling back that micro-batch's
   embedding gradients, and sum the parameter gradients.

Objectives without cross-example terms (MLM, MIM, captioning) ride along in step 3 as plain
accumulation: the mean over micro-batches of each micro-batch's loss (the full-batch loss
whenever every micro-batch counts the same number of tokens or patches). Their randomness
(masks) is drawn per micro-batch.

Micro-batch j takes rows [j * m, (j + 1) * m) of every data shard (m = b / k), so splitting and
merging never move data between devices.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from vlm_jax import objectives as objectives_lib
from vlm_jax.config import ConfigError
from vlm_jax.parallel import sharding
from vlm_jax.train.forward import forward


def check(objectives) -> None:
    """Refuses, at build time, a cross-example objective that cannot be micro-batched: one that
    declares no per-example `reads` (ITM mines negatives and fuses pairs across the batch)."""
    for w in objectives:
        o = w.objective
        if o.cross_example and o.reads is None:
            raise ConfigError(f"'microbatches' > 1 does not support the {o.name!r} objective: it "
                              f"works across the whole batch beyond per-example embeddings; set "
                              f"{o.name}.weight=0 or microbatches=1")


def _reads(objectives) -> tuple[str, ...]:
    """The tower outputs the cross-example objectives read, per example."""
    return tuple(sorted({k for w in objectives for k in w.objective.reads}))


def split(tree, k: int, n_shards: int, constrain=lambda x: x):
    """[B, ...] leaves -> [k, B / k, ...]; micro-batch j holds rows j*m..(j+1)*m of each shard."""
    def one(x):
        x = x.reshape((n_shards, k, -1) + x.shape[1:])
        return constrain(jnp.swapaxes(x, 0, 1).reshape((k, -1) + x.shape[3:]))
    return jax.tree.map(one, tree)


def merge(tree, k: int, n_shards: int):
    """The inverse of `split`: [k, B / k, ...] -> [B, ...] in the original row order."""
    def one(x):
        x = x.reshape((k, n_shards, -1) + x.shape[2:])
        return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[3:])
    return jax.tree.map(one, tree)


def grads(model, objectives, params, batch, rng, step, *, k: int, prepare=lambda p: p,
          teacher=None):
    """(gradients, metrics) of the weighted objectives on `batch`, in `k` micro-batches, on the
    ambient mesh.

    Objectives flagged `cross_example` must be computable from the tower outputs they declare in
    `reads` and the model's scale/bias alone (`check` refuses the others). `prepare` maps the
    params before use (inside the differentiated functions: the train step's stop-gradient on
    frozen params). `teacher`: the per-example objectives' `ctx.teacher` (train/step.py)."""
    check(objectives)
    mesh, batch_axes = sharding.ambient_batch()
    n_shards = sharding.shards(mesh, batch_axes)
    rows = jax.tree.leaves(batch)[0].shape[0]
    if rows % (n_shards * k):
        raise ValueError(f"batch_size {rows} does not split into microbatches={k} on each of "
                         f"{n_shards} data shards")
    constrain = lambda x: x
    if mesh is not None:      # micro-batch index unsharded, rows over the batch axes
        spec = NamedSharding(mesh, P(None, tuple(batch_axes)))
        constrain = lambda x: jax.lax.with_sharding_constraint(x, spec)
    micro = split(batch, k, n_shards, constrain)
    cross = [w for w in objectives if w.objective.cross_example]
    local = [w for w in objectives if not w.objective.cross_example]
    reads = _reads(cross)
    apply = lambda p, b: forward(model, p, b)
    call_with = lambda p: (lambda method, *args: model.apply({"params": p}, *args, method=method))
    scale = lambda p: model.apply({"params": p}, method=lambda m: m.scale())

    metrics, total = {}, jnp.float32(0)
    emb_grads = None
    direct = jax.tree.map(jnp.zeros_like, params)
    if cross:
        # 1. Embeddings of every micro-batch, no activations kept for a backward pass.
        def embed(_, b):
            out = apply(jax.lax.stop_gradient(params), b)
            return None, {key: out[key] for key in reads}
        _, emb = jax.lax.scan(embed, None, micro)
        emb = merge(emb, k, n_shards)

        # 2. The cross-example loss on the full batch: its gradient with respect to each
        #    embedding and to the params it reads directly (the scale and bias).
        def cross_loss(p, e):
            out = {**e, **scale(prepare(p))}
            loss, m, _ = objectives_lib.total_loss(cross, out, batch, step=step,
                                                   rng=jax.random.fold_in(rng, k))
            return loss, m
        (loss, metrics), (direct, g_emb) = jax.value_and_grad(
            cross_loss, argnums=(0, 1), has_aux=True)(params, emb)
        total = total + loss
        emb_grads = split(g_emb, k, n_shards, constrain)

    # 3. Each micro-batch again, now with its VJP: the embeddings' pulled-back gradients plus
    #    the per-example objectives' mean over micro-batches.
    def backward(acc, xs):
        j, b, g = xs

        def surrogate(p):
            p = prepare(p)
            out = apply(p, b)
            value = jnp.float32(0)
            if g is not None:
                value = sum(jnp.vdot(g[key], out[key]) for key in g)
            m = {}
            if local:
                loss, m, _ = objectives_lib.total_loss(
                    local, out, b, call=call_with(p), rng=jax.random.fold_in(rng, j), step=step,
                    teacher=teacher)
                value = value + loss / k
            return value, m
        g_p, m = jax.grad(surrogate, has_aux=True)(params)
        return jax.tree.map(jnp.add, acc, g_p), m

    acc, local_metrics = jax.lax.scan(backward, direct, (jnp.arange(k), micro, emb_grads))
    local_metrics = jax.tree.map(lambda x: x.mean(0), local_metrics)
    if local:
        total = total + local_metrics.pop("loss")
    return acc, {**metrics, **local_metrics, "loss": total}
