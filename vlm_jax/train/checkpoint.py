"""Orbax checkpoints: train state and the Grain iterator position saved together, async.

A step folder is only visible once complete (Orbax writes into a temporary folder and renames
it), so a run killed mid-save resumes from the previous complete step.
"""
from __future__ import annotations

import dataclasses
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax import rules as rules_lib
from vlm_jax.models import layout, posemb


class CheckpointSaveError(OSError):
    """A save failed; the checkpoints completed before it are intact (saves are atomic)."""


def _single_writer_arrays() -> None:
    """In a single process, each replicated array is written from one replica. (Orbax's
    replica-parallel writes split it across replicas so that several hosts share the work; in one
    process that shares nothing and compiles a slice program per array and replica.)"""
    if jax.process_count() == 1:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True, keep_every: int = 0):
        _single_writer_arrays()
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None,
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iter=None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:   # disk full, permissions, a failed earlier async save...
            raise self._failed(step, e) from e

    def restore(self, step: int, abstract_state, data_iter=None, fresh=None):
        """The state at `step` placed on the shardings in `abstract_state`; `data_iter` (if given)
        is moved to the saved position in place. With `fresh` (() -> a freshly initialised
        state), position embeddings saved at another size, and their optimizer moments, are
        fitted to the model's (models/posemb.py; a stage that changes the image size or text
        length): new text positions start from `fresh`'s params and zero moments."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no complete checkpoint for step {step} in {self.directory}; "
                                    f"have {self.manager.all_steps()}")
        saved, fields = self._saved(step)
        # A field the train state gained after the checkpoint was written (e.g. `teacher`) is
        # restored empty, as a run without it has it; one the config fills is an error.
        absent = [f.name for f in dataclasses.fields(abstract_state) if f.name not in fields] \
            if dataclasses.is_dataclass(abstract_state) else []
        filled = [f for f in absent if jax.tree.leaves(getattr(abstract_state, f))]
        if filled:
            raise ValueError(f"checkpoint step {step} in {self.directory} has no {filled} (written "
                             "before the train state held them) and the config needs them: resume "
                             "it with the config it was trained with")
        differ = {p for p, leaf in _flat(abstract_state).items()
                  if p in saved and saved[p] != tuple(leaf.shape)}
        if differ and fresh is None:
            raise ValueError(f"checkpoint step {step} in {self.directory} differs from the model "
                             f"in shape at {sorted(differ)[:10]}")
        target = jax.tree_util.tree_map_with_path(
            lambda path, leaf: jax.ShapeDtypeStruct(
                saved[rules_lib.path_str(path)], leaf.dtype,
                sharding=jax.sharding.NamedSharding(leaf.sharding.mesh, jax.sharding.PartitionSpec()))
            if rules_lib.path_str(path) in differ else leaf, abstract_state)
        if absent:
            target = {f: getattr(target, f) for f in fields}
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        state = self.manager.restore(step, args=ocp.args.Composite(**items)).state
        if absent:
            state = abstract_state.replace(**state)
        if not differ:
            return state
        init = _flat(fresh())

        def fit(path, value, leaf):
            p = rules_lib.path_str(path)
            if p not in differ:
                return value
            fitted = posemb.fit(p, jax.device_get(value), init[p])
            if fitted is None:
                raise ValueError(f"checkpoint step {step} in {self.directory}: {p} is "
                                 f"{saved[p]} there and {tuple(leaf.shape)} in the model; only "
                                 "position embeddings follow the model's size")
            return jax.device_put(fitted.astype(leaf.dtype), leaf.sharding)
        return jax.tree_util.tree_map_with_path(fit, state, abstract_state)

    def _saved(self, step: int) -> tuple[dict[str, tuple], set[str]]:
        """(each saved state leaf's shape, the train state fields saved), from the checkpoint's
        metadata (no array is read)."""
        mgr = ocp.CheckpointManager(self.directory,
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
        try:
            meta = mgr.item_metadata(step)["state"]
        finally:
            mgr.close()
        tree = getattr(meta, "tree", meta)
        return ({p: tuple(m.shape) for p, m in _flat(tree).items() if hasattr(m, "shape")},
                set(tree))

    def _failed(self, step, e: Exception) -> "CheckpointSaveError":
        kept = [x for x in sorted(os.listdir(self.directory)) if x.isdigit()] if os.path.isdir(
            self.directory) else []
        return CheckpointSaveError(
            f"saving checkpoint step {step} in {self.directory} failed: {type(e).__name__}: {e}. "
            f"Complete checkpoints there are untouched and restorable: {kept or 'none'}")

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed("(async)", e) from e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def _flat(tree) -> dict:
    return {rules_lib.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def resolve(path: str) -> tuple[str, int]:
    """(checkpoints folder, step) for a path that is a workdir, its `checkpoints` folder (the
    latest step), or one step's folder `.../checkpoints/<step>`."""
    path = os.path.abspath(os.path.expanduser(path))
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(base)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    steps = sorted(int(x) for x in os.listdir(path) if x.isdigit())
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {path!r}")
    return path, steps[-1]


class ShapeError(ValueError):
    """A checkpoint's params do not have the shapes of the model the config builds."""

    def __init__(self, where: str, mismatches: dict[str, tuple]):
        self.mismatches = mismatches        # path -> (stored shape, wanted shape)
        first = next(iter(mismatches))
        super().__init__(
            f"{where}: {len(mismatches)} params do not fit the model the config builds, e.g. "
            f"{first}: {mismatches[first][0]} stored, {mismatches[first][1]} in the model")


def _flat_shapes(tree, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat_shapes(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = tuple(v.shape)
    return out


def read_params(path: str, abstract=None) -> tuple[dict, int]:
    """The params of a checkpoint (nothing else is read) and its step: host numpy arrays, or
    placed on the shardings of `abstract` (ShapeDtypeStructs shaped like the params; a param
    stored with another shape raises ShapeError before anything is read)."""
    directory, step = resolve(path)
    mgr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    try:
        meta = mgr.item_metadata(step)["state"]
        stored = getattr(meta, "tree", meta)["params"]
        if abstract is None:
            tree = {"params": stored}
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        else:
            have, want = _flat_shapes(stored), _flat_shapes(abstract)
            bad = {k: (have[k], s) for k, s in want.items() if k in have and have[k] != s}
            if bad:
                raise ShapeError(os.path.join(directory, str(step)), bad)
            tree = {"params": abstract}
            args = ocp.checkpoint_utils.construct_restore_args(tree)
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=tree, restore_args=args, partial_restore=True)))
    finally:
        mgr.close()
    return restored.state["params"], step


def write_params(path: str, params: dict, step: int = 0) -> str:
    """Saves host arrays as a params-only checkpoint `path/checkpoints/<step>` that
    `read_params` (and so `config.init`) reads; returns that folder."""
    directory = os.path.join(os.path.abspath(path), "checkpoints")
    mgr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    try:
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave({"params": params})),
                 force=True)
        mgr.wait_until_finished()
    finally:
        mgr.close()
    return os.path.join(directory, str(step))


class InitError(ValueError):
    """config.init cannot supply the params its rules select."""


def load_params(params, loaded: dict, rules, where: str = "the checkpoint"):
    """`params` with each leaf whose path the (regex, bool) `rules` select (first match wins)
    replaced by the same path in `loaded`, placed on the leaf's sharding. Returns (params,
    report); raises InitError listing selected params missing from `loaded` or of another shape,
    except position embeddings, which follow the model's image size and text length
    (models/posemb.py; listed in the report's `resized`). A checkpoint of scanned blocks loads
    into looped ones and vice versa (models/layout.py)."""
    loaded = layout.match(loaded, params)
    flat_loaded = _flat(loaded)
    chosen = rules_lib.tree_map_rules(rules, params, "init")
    paths = rules_lib.tree_paths(params)
    missing, wrong, taken, resized = [], [], [], []

    def pick(path, leaf, use):
        p = rules_lib.path_str(path)
        if not use:
            return leaf
        if p not in flat_loaded:
            missing.append(p)
            return leaf
        value = flat_loaded[p]
        if tuple(value.shape) != tuple(leaf.shape):
            fitted = posemb.fit(p, value, leaf)
            if fitted is None:
                wrong.append(f"{p}: {tuple(value.shape)} in {where}, {tuple(leaf.shape)} in the "
                             "model")
                return leaf
            resized.append(f"{p}: {tuple(value.shape)} -> {tuple(leaf.shape)}")
            value = fitted
        taken.append(p)
        return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

    out = jax.tree_util.tree_map_with_path(pick, params, chosen)
    if missing or wrong:
        raise InitError(f"config.init: {len(missing)} selected params are missing from {where}"
                        + "".join(f"\n  missing {p}" for p in missing[:20])
                        + f"\n{len(wrong)} have another shape"
                        + "".join(f"\n  shape {w}" for w in wrong[:20])
                        + "\nchange config.init_rules to leave them out")
    unexpected = sorted(set(flat_loaded) - set(paths))
    return out, {"loaded": taken, "kept_init": [p for p in paths if p not in taken],
                 "unexpected": unexpected, "resized": resized}
