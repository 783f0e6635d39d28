"""Eval sets: what `eval.datasets.NAME` (or a built-in name) says about a dataset, resolved.

A set is read through the training data's sources (`vlm_jax/data/sources.py`): built-in, our
ArrayRecord shards, TFDS datasets prepared in array_record, an image folder or CLIP_benchmark's
WebDataset layout. Zero-shot class names and prompt templates come from the dataset itself
(built-in info, a TFDS label feature's names, an image folder's sub-folders, a WebDataset
folder's classnames.txt and zeroshot_classification_templates.txt), from the lists shipped in `vlm_jax/evals/data/`
(`imagenet1k`, `cifar10`, `cifar100` class names; `imagenet1k` and `cifar` templates: CLIP's) or
from a file, one entry per line.
"""
from __future__ import annotations

import json
import os

from vlm_jax import config as config_lib
from vlm_jax.data import builtin, sources

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CLASS_LISTS = ("imagenet1k", "cifar10", "cifar100")
TEMPLATE_SETS = ("imagenet1k", "cifar")
WDS_CLASSES, WDS_TEMPLATES = "classnames.txt", "zeroshot_classification_templates.txt"


def spec(config, name: str):
    """The eval_dataset(...) entry of `name`: eval.datasets.NAME, else the built-in dataset."""
    if name in config.eval.datasets:
        s = config.eval.datasets[name]
        return held_out_set(config, s) if s.kind == "holdout" else s
    if name in builtin.DATASETS:
        return config_lib.eval_dataset(kind="builtin", path=name)
    raise ValueError(f"eval set {name!r} is neither in eval.datasets "
                     f"({', '.join(sorted(config.eval.datasets)) or 'empty'}) nor built in "
                     f"({', '.join(sorted(builtin.DATASETS))})")


def held_out_set(config, s):
    """An eval_dataset(kind='holdout', path=SOURCE) as the records it names: the source's
    last share, read with its keys, scored for retrieval on its captions."""
    src = config.data.sources.get(s.path)
    if src is None or not src.holdout:
        raise ValueError(f"eval set kind holdout names source {s.path!r}, which is not in "
                         "data.sources or holds nothing out")
    return config_lib.eval_dataset(
        kind=src.kind, path=src.path, split=src.split, image_key=src.image_key,
        caption_key=src.caption_key, label_key="", resize=s.resize, holdout=src.holdout,
        holdout_max=src.holdout_max)


def source(s, split: str):
    """The entry as a source `sources.open_source` reads, at `split`."""
    out = config_lib.eval_dataset(**s.to_dict())
    out.split = split
    return out


def read_lines(value: str, shipped: tuple[str, ...], kind: str, shipped_suffix: str) -> list[str]:
    """A shipped list's or a file's non-empty lines."""
    if value in shipped:
        path = os.path.join(SHIPPED, f"{value}_{shipped_suffix}.txt")
    elif os.path.isfile(os.path.expanduser(value)):
        path = os.path.expanduser(value)
    else:
        raise FileNotFoundError(f"{kind} {value!r} is neither a shipped list "
                                f"({', '.join(shipped)}) nor a file")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{kind} file {path} is empty")
    return lines


def own_classes(s, data_dir: str | None) -> list[dict] | None:
    """The dataset's own classes ({'name': ..., plus a built-in's fields}), None if it has none."""
    if s.kind == "builtin":
        return builtin.info(s.path, data_dir)["classes"]
    if s.kind == "folder":
        return [{"name": c} for c in sources.ImageFolder(os.path.expanduser(s.path)).classes]
    if s.kind == "wds":
        path = os.path.join(os.path.expanduser(s.path), WDS_CLASSES)
        return [{"name": n} for n in read_lines(path, (), "class names", "")] if os.path.isfile(
            path) else None
    if s.kind == "tfds" and s.label_key:
        feature = sources.tfds_builder(s, data_dir).info.features
        for part in s.label_key.split("/"):
            feature = feature[part] if part in feature.keys() else None
            if feature is None:
                return None
        names = getattr(feature, "names", None)
        return [{"name": n.replace("_", " ")} for n in names] if names else None
    return None


def classes(s, name: str, data_dir: str | None) -> list[dict]:
    """Zero-shot classes: the dataset's own, named by `class_names` where it is set."""
    own = own_classes(s, data_dir)
    if not s.class_names:
        if own is None:
            raise ValueError(f"eval set {name!r} ({s.kind} {s.path}) has no class names of its "
                             f"own: set eval.datasets.{name}.class_names to a file or one of "
                             f"{CLASS_LISTS}")
        return own
    names = read_lines(s.class_names, CLASS_LISTS, f"eval.datasets.{name}.class_names", "classes")
    if own is not None and len(own) != len(names):
        raise ValueError(f"eval.datasets.{name}.class_names {s.class_names!r} has {len(names)} "
                         f"names but the dataset has {len(own)} classes")
    return [{"name": n} for n in names]


def templates(s, name: str, data_dir: str | None):
    """Zero-shot prompt templates: `templates`, else the built-in's own, else CLIP's ImageNet 80.
    A .json file holds a list of templates or, CLIP_benchmark's per-class form (CuPL), a mapping
    from class name to that class's prompts (returned as a dict)."""
    key = f"eval.datasets.{name}.templates"
    if s.templates.endswith(".json"):
        return read_json_templates(os.path.expanduser(s.templates), key)
    if s.templates:
        return tuple(read_lines(s.templates, TEMPLATE_SETS, key, "templates"))
    if s.kind == "builtin":
        return tuple(builtin.info(s.path, data_dir)["templates"])
    if s.kind == "wds" and os.path.isfile(own := os.path.join(os.path.expanduser(s.path),
                                                              WDS_TEMPLATES)):
        return tuple(read_lines(own, (), key, ""))
    return tuple(read_lines("imagenet1k", TEMPLATE_SETS, "templates", "templates"))


def read_json_templates(path: str, key: str):
    """A JSON list of templates (a tuple) or {class name: [prompts]} (a dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key} file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{key} file {path} is not JSON: {e}") from None
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        return tuple(value)
    if isinstance(value, dict) and value and all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in value.values()):
        return {str(k): tuple(v) for k, v in value.items()}
    raise ValueError(f"{key} file {path} must hold a list of templates or a mapping from class "
                     "name to a list of prompts")


def missing(s, splits, data_dir: str | None) -> str | None:
    """Why the set cannot be read at `splits` (the error's one line), or None."""
    for split in splits:
        try:
            ds, _, _ = sources.open_source(source(s, split), data_dir, need_captions=False)
            if not len(ds):
                return f"{s.path} [{split}] holds no records"
        except Exception as e:      # what opening a source raises: the reason to list
            return f"{type(e).__name__}: {e}".splitlines()[0]
    return None
