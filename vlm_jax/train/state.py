"""The train state, born sharded: shapes from `jax.eval_shape`, then a jitted init whose
`out_shardings` place every param and optimizer slot directly on its devices."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vlm_jax import objectives
from vlm_jax.parallel import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    loss_ema: Any = flax.struct.field(default_factory=dict)  # per objective, when balancing
    teacher: Any = flax.struct.field(default_factory=dict)   # the params' EMA, when configured


def dummy_inputs(config, batch: int = 1):
    s, L = config.data.image_size, config.tokenizer.max_len
    return (jnp.zeros((batch, s, s, 3), jnp.uint8), jnp.zeros((batch, L), jnp.int32),
            jnp.ones((batch, L), bool))


def abstract_params(model: nn.Module, config, rng):
    """Boxed (logically annotated) param shapes, without computing anything."""
    return jax.eval_shape(lambda r: model.init(r, *dummy_inputs(config)), rng)["params"]


def balanced(config) -> list[str]:
    """The objectives whose running loss means the state carries (balancing only)."""
    return objectives.names(config) if config.balance.enabled else []


def shardings(boxed_params, tx: optax.GradientTransformation, mesh: Mesh, rules,
              config, param_sh=None) -> TrainState:
    """NamedShardings for every leaf of the TrainState (`param_sh`: the params' own, when
    already computed)."""
    if param_sh is None:
        param_sh = sharding.param_shardings(boxed_params, mesh, rules, config.mesh.param_rules,
                                            config.mesh.fsdp_min_mib)
    repl = sharding.replicated(mesh)
    abs_opt = jax.eval_shape(tx.init, sharding.shapes(boxed_params))
    # Slots shaped like the params (Adam's moments) follow the params; the rest is replicated.
    # Frozen params (optax.partition) hold a MaskedNode placeholder instead of a slot.
    opt_sh = optax.tree_map_params(
        tx, lambda x, s: x if isinstance(x, optax.MaskedNode) else s, abs_opt, param_sh,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, (jax.sharding.Sharding, optax.MaskedNode)))
    ema_sh = {name: repl for name in balanced(config)}
    return TrainState(step=repl, params=param_sh, opt_state=opt_sh, loss_ema=ema_sh,
                      teacher=param_sh if has_teacher(config) else {})


def has_teacher(config) -> bool:
    return config.teacher.momentum > 0


def from_params(params, tx, config) -> TrainState:
    """The state at step 0 around `params`: the optimizer's initial slots, zero running means,
    the teacher (if any) a copy of the params."""
    teacher = jax.tree.map(jnp.copy, params) if has_teacher(config) else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      loss_ema={n: jnp.zeros((), jnp.float32) for n in balanced(config)},
                      teacher=teacher)


def ema(teacher, params, momentum, step, start):
    """The teacher after the update that made `params` (the state's step is then `step`): the
    params themselves until `start`, then momentum * teacher + (1 - momentum) * params."""
    m = jnp.where(step <= start, 0.0, momentum)
    return jax.tree.map(lambda t, p: (m * t + (1 - m) * p).astype(t.dtype), teacher, params)


def _init_fn(model: nn.Module, tx, config):
    def init(rng) -> TrainState:
        return from_params(nn.unbox(model.init(rng, *dummy_inputs(config))["params"]), tx, config)
    return init


def init_program(model: nn.Module, tx, config, state_sh: TrainState):
    """The jitted `rng -> TrainState` that computes the initial state directly onto `state_sh`
    (see `shardings`); call it inside the run's mesh and logical rules."""
    return jax.jit(_init_fn(model, tx, config), out_shardings=state_sh)


def abstract(state_sh: TrainState, model: nn.Module, tx, config, rng) -> TrainState:
    """ShapeDtypeStructs with target shardings: what a checkpoint restores onto."""
    shapes = jax.eval_shape(_init_fn(model, tx, config), rng)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, state_sh)


def num_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
