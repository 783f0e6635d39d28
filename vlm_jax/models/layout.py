"""Scanned and looped layouts of the same transformer stack's params.

Looped: `.../block0/...`, `.../block1/...`; scanned (`model.scan`): one `.../blocks/...` whose
leaves stack the blocks' on a leading axis. A checkpoint from either layout loads into a model of
the other: `match` converts a loaded tree to the layout of the tree it is loaded into.
"""
from __future__ import annotations

import re

import numpy as np

_BLOCK = re.compile(r"block(\d+)")


def _block_keys(tree: dict) -> list[str]:
    """`block0..block{n-1}` among the keys, in order, or [] when they are not such a run."""
    found = sorted((int(m.group(1)), k) for k in tree if (m := _BLOCK.fullmatch(k)))
    if not found or [i for i, _ in found] != list(range(len(found))):
        return []
    return [k for _, k in found]


def _map_leaves(fn, trees):
    if isinstance(trees[0], dict):
        return {k: _map_leaves(fn, [t[k] for t in trees]) for k in trees[0]}
    return fn(*trees)


def to_scanned(tree):
    """Every run of `block<i>` siblings -> one `blocks` subtree of stacked leaves."""
    if not isinstance(tree, dict):
        return tree
    keys = _block_keys(tree)
    out = {k: to_scanned(v) for k, v in tree.items() if k not in keys}
    if keys:
        out["blocks"] = _map_leaves(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                    [to_scanned(tree[k]) for k in keys])
    return out


def to_looped(tree):
    """Every `blocks` subtree -> `block0..block{n-1}` siblings (leaves split on axis 0)."""
    if not isinstance(tree, dict):
        return tree
    out = {k: to_looped(v) for k, v in tree.items() if k != "blocks"}
    if "blocks" in tree:
        blocks = to_looped(tree["blocks"])
        depth = _depth(blocks)
        for i in range(depth):
            out[f"block{i}"] = _map_leaves(lambda x: np.asarray(x)[i], [blocks])
    return out


def _depth(tree) -> int:
    while isinstance(tree, dict):
        tree = next(iter(tree.values()))
    return int(np.shape(tree)[0])


def match(loaded, target):
    """`loaded` in the layout of `target` (both nested dicts of params), stack by stack."""
    if not isinstance(loaded, dict) or not isinstance(target, dict):
        return loaded
    if "blocks" in target and "blocks" not in loaded and _block_keys(loaded):
        loaded = to_scanned(loaded)
    elif "blocks" in loaded and "blocks" not in target and _block_keys(target):
        loaded = to_looped(loaded)
    return {k: match(v, target[k]) if k in target else v for k, v in loaded.items()}
