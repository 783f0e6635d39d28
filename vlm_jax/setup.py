"""The data-free setup: everything a run derives from its config without reading any data.

Mesh, logical rules, tokenizer, model, abstract and sharded state, optimizer, objectives and the
jitted train step. Training, evaluation, filtering, FLOP counting and the benchmarks all build
this one object; the trainer adds the data pipeline and the evaluators on top. The optimizer,
state shardings, objectives and step are built on first use, so evaluating a checkpoint never
builds an optimizer.

Durations in epochs need the size of the training set: pass `num_train` (the trainer does);
without it, asking for a duration given in epochs is a ConfigError naming the key.

Setups whose configs differ only in what no program reads (data sources, evaluators, logging,
checkpoint cadence, seed; see `program_config`) on the same mesh share their traced programs
within a process: a notebook re-running a cell, or evaluating many checkpoints of one run,
traces and compiles once.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import json

import flax.linen as nn
import jax
import numpy as np

from vlm_jax import config as config_lib
from vlm_jax import models, objectives as objectives_lib, rules as rules_lib
from vlm_jax.data import regions as regions_lib, tokenizer as tokenizer_lib
from vlm_jax.parallel import mesh as mesh_lib, sharding
from vlm_jax.train import optim, state as state_lib, step as step_lib

BATCH_KEYS = ("image", "tokens", "mask", "label")
NEGATIVE_KEYS = ("neg_tokens", "neg_mask", "neg_valid")    # with itm.text_negatives
GROUNDING_KEYS = ("region_box", "region_valid") + tuple(f"{t}_{k}" for t in regions_lib.TASKS
                                           for k in ("tokens", "mask", "targets"))

# Read only by the loop, the data pipeline, checkpoints, logs and evaluators (`data.image_size`
# excepted), and durations, which programs see as resolved step counts.
_NOT_IN_PROGRAMS = ("data", "data_dir", "eval", "log", "init", "init_rules", "resume", "seed",
                    "async_checkpointing", "keep_checkpoints", "keep_every_steps")
_DURATIONS = ("total_", "log_every_", "checkpoint_every_", "eval_every_")


def program_config(config) -> str:
    """The part of `config` that the model, optimizer, objectives and step are built from, as
    canonical JSON (durations excluded: key them by their resolved steps)."""
    d = config.to_dict()
    kept = {k: v for k, v in d.items()
            if k not in _NOT_IN_PROGRAMS and not k.startswith(_DURATIONS)}
    kept["data.image_size"] = d["data"]["image_size"]
    kept["optim"] = {k: v for k, v in d["optim"].items() if not k.startswith("warmup_")}
    return json.dumps(kept, sort_keys=True, default=str)


# Traced programs (jitted functions, abstract shapes) by (what, program config, mesh, ...): a
# few dozen at most in a process, the least recently used dropped first.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_MAX_PROGRAMS = 64


def _shared(key, build):
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    _PROGRAMS[key] = value = build()
    if len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return value


class Setup:
    def __init__(self, config, mesh=None, *, num_train: int | None = None, tokenizer=None):
        config_lib.validate(config)
        objectives_lib.check(config)
        self.config = config
        self.mesh = mesh_lib.from_config(config) if mesh is None else mesh
        self.rules = sharding.logical_rules(config)
        self.tokenizer = tokenizer_lib.build(config) if tokenizer is None else tokenizer
        self.num_train = num_train
        self.model = models.build(config, self.tokenizer.vocab_size, objectives_lib.heads(config))
        self.init_rng, self.step_rng = jax.random.split(jax.random.key(config.seed))
        self.batch_sh = sharding.batch_sharding(self.mesh, self.rules)
        # Logically annotated param shapes (tracing only), taken outside any ambient mesh.
        self._program = program_config(config)
        self.boxed_params = _shared(("boxed_params", self._program), lambda: (
            state_lib.abstract_params(self.model, config, self.init_rng)))
        self.param_shapes = sharding.shapes(self.boxed_params)

    def context(self):
        """The run's one mesh and logical rules, entered around everything that runs on them."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    # Durations -------------------------------------------------------------------------------

    def steps(self, name: str) -> int | None:
        """Duration `name` (e.g. 'log_every', 'eval.zeroshot_every') in steps; None when unset."""
        spe = None if self.num_train is None else self.num_train / self.config.batch_size
        total = self.total_steps if config_lib.unit(self.config, name) == "percent" else None
        return config_lib.steps(self.config, name, steps_per_epoch=spe, total_steps=total)

    @functools.cached_property
    def total_steps(self) -> int:
        return self.steps("total")

    @functools.cached_property
    def warmup_steps(self) -> int:
        return self.steps("optim.warmup") or 0

    # Params and state ------------------------------------------------------------------------

    @functools.cached_property
    def param_sh(self):
        c = self.config.mesh
        return sharding.param_shardings(self.boxed_params, self.mesh, self.rules, c.param_rules,
                                        c.fsdp_min_mib)

    def abstract_params(self):
        """ShapeDtypeStructs of the params on their shardings (what a checkpoint's params
        restore onto)."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.param_shapes, self.param_sh)

    def describe_sharding(self) -> list[str]:
        return [f"mesh {dict(self.mesh.shape)}"] + sharding.describe(
            self.boxed_params, self.mesh, self.rules, self.config.mesh.param_rules,
            self.config.mesh.fsdp_min_mib)

    @functools.cached_property
    def _optimizer(self):
        return optim.build(self.config, self.param_shapes, self.total_steps,
                           self.warmup_steps)

    @property
    def tx(self):
        return self._optimizer[0]

    @property
    def schedule(self):
        return self._optimizer[1]

    @functools.cached_property
    def state_sh(self):
        return state_lib.shardings(self.boxed_params, self.tx, self.mesh, self.rules, self.config,
                                   param_sh=self.param_sh)

    @functools.cached_property
    def frozen(self):
        return rules_lib.tree_map_rules(self.config.optim.freeze_rules,
                                        self.param_shapes, "freeze")

    def shared(self, what: str, build, *key):
        """`build()`, or what it built for a Setup of the same program config and mesh (and
        `key`) in this process: jitted programs built from this setup are traced once."""
        m = self.mesh
        devices = tuple((d.platform, d.id) for d in m.devices.flat)     # ids repeat across platforms
        return _shared((what, self._program, devices, m.axis_names,
                        m.devices.shape, tuple(m.axis_types), *key), build)

    def init_state(self):
        # The optimizer's initial state does not depend on the schedule: any run length shares.
        init = self.shared("init", lambda: state_lib.init_program(
            self.model, self.tx, self.config, self.state_sh))
        with self.context():
            return init(self.init_rng)

    def abstract_state(self):
        return self.shared("abstract_state", lambda: state_lib.abstract(
            self.state_sh, self.model, self.tx, self.config, self.init_rng))

    # The step --------------------------------------------------------------------------------

    @functools.cached_property
    def objectives(self):
        return objectives_lib.build(self.config, self.tokenizer, self.total_steps)

    def off_at(self, step: int) -> frozenset[str]:
        """The objectives the step at `step` leaves out, their schedules being 0 there (none
        while balancing: its running means take every loss at every step)."""
        if self.config.balance.enabled:
            return frozenset()
        return objectives_lib.off_at(self.objectives, step)

    def train_step(self, off: frozenset[str] = frozenset()):
        """The jitted `(state, batch, rng) -> (state, metrics)`, the state donated; the
        objectives named in `off` not computed (`off_at`: one program per set of them in a run;
        by default every objective, as launch.compile sizes the run)."""
        c = self.config

        def build():
            objs = objectives_lib.switch_off(self.objectives, off)
            fn = step_lib.make(self.model, self.tx, objs, self.schedule,
                               skip_nonfinite=c.nonfinite == "skip",
                               balance_decay=c.balance.decay, frozen=self.frozen,
                               microbatches=c.microbatches,
                               patch_dropout=c.model.image.patch_dropout,
                               teacher_momentum=c.teacher.momentum,
                               teacher_start=self.steps("teacher.start"))
            return step_lib.jit(fn, self.state_sh, {k: self.batch_sh for k in self.batch_keys},
                                self.mesh)
        return self.shared("step", build, self.total_steps, self.warmup_steps,
                           tuple(sorted(off)))

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """What a training batch holds."""
        return (BATCH_KEYS + (NEGATIVE_KEYS if config_lib.text_negatives(self.config) else ())
                + (GROUNDING_KEYS if config_lib.grounding_bins(self.config) else ())
                + (("local_image",) if config_lib.local_views(self.config) else ())
                + (("colourless",) if config_lib.colourless(self.config) else ()))

    def batch_shapes(self, batch_size: int | None = None) -> dict:
        """ShapeDtypeStructs of a global batch (default: the config's) on the mesh, shaped like
        `synthetic_batch` but without making one: to lower and compile a step at any size."""
        c = self.config
        b, size, length = batch_size or c.batch_size, c.data.image_size, c.tokenizer.max_len
        shapes = {"image": ((b, size, size, 3), np.uint8), "tokens": ((b, length), np.int32),
                  "mask": ((b, length), np.bool_), "label": ((b,), np.int32),
                  "neg_tokens": ((b, length), np.int32), "neg_mask": ((b, length), np.bool_),
                  "neg_valid": ((b,), np.bool_), "region_valid": ((b,), np.bool_),
                  "region_box": ((b, 4), np.float32),
                  "local_image": ((b, size, size, 3), np.uint8), "colourless": ((b,), np.bool_),
                  **{f"{t}_{k}": ((b, length), dtype) for t in regions_lib.TASKS
                     for k, dtype in (("tokens", np.int32), ("mask", np.bool_),
                                      ("targets", np.bool_))}}
        return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=self.batch_sh)
                for k in self.batch_keys}

    def synthetic_batch(self, seed: int = 0, classes: int = 10) -> dict:
        """A random batch (host arrays) shaped like the pipeline's: uint8 images, tokenized
        captions of random length (BOS/EOS and padding as the tokenizer makes them), labels in
        [0, classes). For benchmarks, compile checks and tests of everything but the data;
        `pipeline.to_global(batch, setup.batch_sh)` puts it on the mesh."""
        c, rng = self.config, np.random.default_rng(seed)
        b, size = c.batch_size, c.data.image_size
        words = [f"w{i}" for i in range(50)]
        captions = [" ".join(rng.choice(words, rng.integers(1, c.tokenizer.max_len)))
                    for _ in range(b)]
        tokens, mask = tokenizer_lib.tokenize(self.tokenizer, captions, c.tokenizer.max_len)
        batch = {"image": rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
                 "tokens": tokens, "mask": mask,
                 "label": rng.integers(0, classes, b).astype(np.int32)}
        if config_lib.text_negatives(c):    # each caption's words reversed; some have none
            negative = [" ".join(t.split()[::-1]) for t in captions]
            batch["neg_tokens"], batch["neg_mask"] = tokenizer_lib.tokenize(
                self.tokenizer, negative, c.tokenizer.max_len)
            batch["neg_valid"] = rng.random(b) < 0.75
        if bins := config_lib.grounding_bins(c):    # a random box per caption; some have none
            t = self.tokenizer
            boxes = np.sort(rng.random((b, 2, 2)), axis=1).transpose(0, 2, 1).reshape(b, 4)
            boxes = boxes[:, [0, 2, 1, 3]].astype(np.float32)       # x0 < x1, y0 < y1
            rows = [regions_lib.task_sequences(
                t.encode(caption), box, bins=bins, vocab_size=t.vocab_size,
                max_len=c.tokenizer.max_len, bos=t.bos_id if t.add_bos else None,
                eos=t.eos_id if t.add_eos else None, pad=t.pad_id)
                for caption, box in zip(captions, boxes)]
            batch.update({k: np.stack([r[k] for r in rows]) for k in rows[0]})
            batch["region_box"] = boxes
            batch["region_valid"] = rng.random(b) < 0.75
        if config_lib.local_views(c):
            batch["local_image"] = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        if config_lib.colourless(c):
            batch["colourless"] = rng.random(b) < max(c.data.grayscale + c.data.hue_shift, 0.25)
        return batch
