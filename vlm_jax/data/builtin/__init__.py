"""Datasets that need no network: generated or shipped with an installed package.

`ensure(name, data_dir)` prepares a dataset on first use into `data_dir/name/version/` as
ArrayRecord files plus `info.json`. Preparation writes into a private temporary folder and renames
it into place, so an interrupted or concurrent preparation never leaves a half-written dataset.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from absl import logging

from vlm_jax.data.builtin import digits, shapes

DATASETS = {"digits": digits, "shapes": shapes}


def default_data_dir() -> str:
    if os.environ.get("VLM_JAX_DATA_DIR"):
        return os.environ["VLM_JAX_DATA_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "vlm_jax")


def _module(name: str):
    if name not in DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def dataset_dir(name: str, data_dir: str | None = None) -> str:
    return os.path.join(data_dir or default_data_dir(), name, _module(name).VERSION)


def ensure(name: str, data_dir: str | None = None) -> str:
    """Prepares `name` if it is missing; returns its folder."""
    final = dataset_dir(name, data_dir)
    if os.path.exists(os.path.join(final, "info.json")):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    t0 = time.time()
    logging.info("Preparing built-in dataset %r into %s", name, final)
    try:
        info = _module(name).prepare(tmp)
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.exists(os.path.join(final, "info.json")):
                raise
            shutil.rmtree(tmp)  # another process finished first; its copy is identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("Prepared %r (%s) in %.1fs", name,
                 {k: v for k, v in info["splits"].items()}, time.time() - t0)
    return final


def info(name: str, data_dir: str | None = None) -> dict:
    with open(os.path.join(ensure(name, data_dir), "info.json")) as f:
        return json.load(f)


def split_path(name: str, split: str, data_dir: str | None = None) -> str:
    meta = info(name, data_dir)
    if split not in meta["splits"]:
        raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(meta['splits'])}")
    return os.path.join(dataset_dir(name, data_dir), f"{split}.array_record")
