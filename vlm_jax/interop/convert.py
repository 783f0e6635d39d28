"""Detecting a checkpoint's format, converting it, checking the result against our model, and
writing it as an Orbax checkpoint with the config that rebuilds the architecture."""
from __future__ import annotations

import glob
import json
import os
import shutil
import time

import jax
import numpy as np
from absl import logging

from vlm_jax.interop import hf, open_clip, tensors

FORMATS = ("hf_clip", "hf_siglip", "open_clip")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin")


def _weights_in(folder: str) -> str:
    for name in WEIGHT_FILES:
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    if glob.glob(os.path.join(folder, "*.safetensors.index.json")):
        raise ValueError(f"{folder}: sharded checkpoints are not supported; merge the shards "
                         "into one model.safetensors")
    raise FileNotFoundError(f"{folder}: none of {', '.join(WEIGHT_FILES)}")


def detect(path: str) -> tuple[str, str, dict]:
    """(format, weights file, Hugging Face config or {}) of a checkpoint folder or file."""
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        kind = cfg.get("model_type")
        if kind not in (None, "clip", "siglip"):
            raise ValueError(f"{cfg_path}: model_type {kind!r}; convertible: clip, siglip")
        weights = _weights_in(path)
        return (f"hf_{kind}", weights, cfg) if kind else ("open_clip", weights, {})
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    return "open_clip", path, {}   # a lone file: Hugging Face checkpoints come as folders


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    return tensors.read(path)


def _flat(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _check(params: dict, config) -> None:
    """Every param our model has, of its shape, and nothing else."""
    import flax.linen as nn

    from vlm_jax import models
    from vlm_jax.train import state as state_lib
    model = models.build(config, params["txt"]["embedding"]["embedding"].shape[0])
    want = _flat(jax.tree.map(lambda x: x.shape,
                              nn.unbox(state_lib.abstract_params(model, config, jax.random.key(0)))))
    have = {k: v.shape for k, v in _flat(params).items()}
    problems = [f"missing {k}" for k in want if k not in have]
    problems += [f"unexpected {k}" for k in have if k not in want]
    problems += [f"{k}: {have[k]} converted, {want[k]} in the model" for k in want
                 if k in have and tuple(have[k]) != tuple(want[k])]
    if problems:
        raise ValueError("the converted params do not fit the model their config builds:\n  "
                         + "\n  ".join(problems[:20]))


def convert(path: str, out: str | None = None, act: str = "gelu", head_width: int = 64):
    """Converts the checkpoint at `path`; returns (config, params as numpy). With `out`, writes
    OUT/checkpoints/0 (params only; `config.init=OUT`) and OUT/config.json, and copies a
    Hugging Face folder's tokenizer.json to OUT (tokenizer.name=hf). `act` and `head_width`
    describe open_clip checkpoints (their files do not record them)."""
    from vlm_jax import config as config_lib
    t0 = time.perf_counter()
    fmt, weights, hf_cfg = detect(path)
    logging.info("converting %s (%s)", weights, fmt)
    sd = tensors.read(weights)
    logging.info("read %d tensors (%.1fM values) in %.1fs", len(sd),
                 sum(v.size for v in sd.values()) / 1e6, time.perf_counter() - t0)
    if fmt == "hf_clip":
        params, keys = hf.clip_params(sd, hf_cfg), hf.clip_config(hf_cfg)
    elif fmt == "hf_siglip":
        params, keys = hf.siglip_params(sd, hf_cfg), hf.siglip_config(hf_cfg)
    else:
        params, keys = open_clip.params(sd, head_width), open_clip.config(sd, act, head_width)
    params = jax.tree.map(lambda x: np.array(x, np.float32, order="C"), params)
    config = config_lib.defaults()
    for key, value in keys.items():
        config_lib.assign(config, key, value)
    tok = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else ""
    if out and tok and os.path.exists(tok):
        os.makedirs(out, exist_ok=True)
        shutil.copy(tok, os.path.join(out, "tokenizer.json"))
        config.tokenizer.name, config.tokenizer.path = "hf", os.path.join(
            os.path.abspath(out), "tokenizer.json")
    config_lib.validate(config)
    _check(params, config)
    if out:
        from vlm_jax.train import checkpoint
        where = checkpoint.write_params(out, params)
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1, sort_keys=True))
        logging.info("wrote %s and %s in %.1fs", where, os.path.join(out, "config.json"),
                     time.perf_counter() - t0)
    return config, params
