"""The train step: a pure `(state, batch, rng) -> (state, metrics)`, jitted with explicit
shardings and the state donated."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlm_jax import objectives as objectives_lib
from vlm_jax.train import accumulate
from vlm_jax.train.forward import drop_patches, forward
from vlm_jax.train.state import TrainState, ema


def make(model: nn.Module, tx: optax.GradientTransformation, objectives, sched,
         skip_nonfinite: bool = False, balance_decay: float = 0.99, frozen=None,
         microbatches: int = 1, patch_dropout: float = 0.0, teacher_momentum: float = 0.0,
         teacher_start: int = 0):
    """`nonfinite` in the metrics is 1.0 when the loss, the gradients or the updated params are
    not finite; with `skip_nonfinite` such a step leaves params and optimizer state unchanged.
    A state with `loss_ema` entries balances the objectives (see objectives.total_loss).
    `frozen` (bools like the params) stops gradients at frozen params, so XLA drops the backward
    pass of a frozen tower instead of computing gradients that the optimizer zeroes.
    `microbatches` > 1 computes the gradient in that many sequential micro-batches, keeping
    every contrastive negative (train/accumulate.py; no balancing then). `patch_dropout` > 0
    shows the image tower a random subset of each image's patches (FLIP), the rest dropped.
    A state with a `teacher` moves it towards the new params (state.ema with `teacher_momentum`
    from step `teacher_start`); objectives reach it through their context's `teacher` call,
    outside the differentiated function, so it gets no gradient.
    The mesh is the ambient one (jax.set_mesh) when the step is traced."""
    if microbatches > 1:
        accumulate.check(objectives)
    def prepare(params):
        if frozen is None:
            return params
        return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)

    def step(state: TrainState, batch: dict, base_rng):
        # fold_in(step): the same randomness at a step whether or not the run was resumed.
        rng = jax.random.fold_in(base_rng, state.step)
        teacher = None
        if state.teacher:
            teacher = lambda method, *args: jax.lax.stop_gradient(model.apply(
                {"params": state.teacher}, *args, method=method))
        if patch_dropout:
            batch = drop_patches(model, batch, rng, patch_dropout)

        def loss_fn(params):
            params = prepare(params)
            out = forward(model, params, batch)
            call = lambda method, *args: model.apply({"params": params}, *args, method=method)
            total, metrics, running = objectives_lib.total_loss(
                objectives, out, batch, call=call, rng=rng, step=state.step,
                running=state.loss_ema or None, decay=balance_decay, teacher=teacher)
            return total, (metrics, running)

        if microbatches > 1:
            grads, metrics = accumulate.grads(model, objectives, state.params, batch, rng,
                                              state.step, k=microbatches, prepare=prepare,
                                              teacher=teacher)
            running = state.loss_ema
        else:
            (_, (metrics, running)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norms = {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
                 "update_norm": optax.tree.norm(updates)}
        finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(norms["grad_norm"])
                  & jnp.isfinite(norms["param_norm"]))
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
            running = jax.tree.map(keep, running, state.loss_ema)
        teacher_params = state.teacher
        if teacher_params:
            teacher_params = ema(teacher_params, params, teacher_momentum, state.step + 1,
                                 teacher_start)
        metrics = {**metrics, **norms, "lr": sched(state.step),
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                          loss_ema=running, teacher=teacher_params), metrics

    return step


def jit(step_fn, state_sh: TrainState, batch_sh, mesh):
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sh, repl),
                   out_shardings=(state_sh, repl), donate_argnums=(0,))

