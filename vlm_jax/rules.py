"""Rules over the parameter tree: `(regex, value)` pairs matched against '/'-joined param paths.

The same mechanism drives freezing, weight-decay and learning-rate multipliers (and later
sharding and partial loading): the first rule whose regex fully matches a path wins, and every
param must be matched by some rule, so a typo in a regex cannot silently leave params out.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax

Rules = Sequence[tuple[str, Any]]


def path_str(path) -> str:
    """'img/block0/attn/q/kernel' for a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def tree_paths(tree) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def compile_rules(rules: Rules, what: str) -> list[tuple[re.Pattern, Any]]:
    out = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(f"{what} rule #{i} must be a (regex, value) pair, got {rule!r}")
        try:
            out.append((re.compile(rule[0]), rule[1]))
        except re.error as e:
            raise ValueError(f"{what} rule #{i} has a bad regex {rule[0]!r}: {e}") from None
    return out


def first(compiled, rules: Rules, path: str, what: str) -> tuple[int, Any]:
    for i, (regex, value) in enumerate(compiled):
        if regex.fullmatch(path):
            return i, value
    raise ValueError(f"no {what} rule matches param '{path}'; rules: {[r[0] for r in rules]}")


def match(rules: Rules, path: str, what: str = "param") -> tuple[int, Any]:
    """(index of the first rule fully matching `path`, its value); ValueError if none does."""
    return first(compile_rules(rules, what), rules, path, what)


def tree_map_rules(rules: Rules, tree, what: str = "param"):
    """A tree like `tree` holding, at each leaf, the value of the rule matching its path."""
    compiled = compile_rules(rules, what)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: first(compiled, rules, path_str(path), what)[1], tree)


def summary(rules: Rules, tree, what: str) -> list[str]:
    """One line per rule: how many params (and values) it took, for the console."""
    compiled = compile_rules(rules, what)
    count, size = [0] * len(rules), [0] * len(rules)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        i, _ = first(compiled, rules, path_str(path), what)
        count[i] += 1
        size[i] += int(getattr(leaf, "size", 1))
    return [f"{what}: rule #{i} {rule[0]!r} = {rule[1]!r} took {count[i]} params "
            f"({size[i]:,} values)" for i, rule in enumerate(rules)]


def describe(rules: Rules, tree, what: str) -> list[str]:
    """One line per param: which rule matched it (logged once at start)."""
    compiled = compile_rules(rules, what)
    lines = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        p = path_str(path)
        i, v = first(compiled, rules, p, what)
        lines.append(f"{what}: {p} <- rule #{i} {rules[i][0]!r} = {v!r}")
    return lines
