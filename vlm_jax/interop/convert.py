"""Detecting a checkpoint's format, converting it, checking the result against our model, and
writing it as an Orbax checkpoint with the config that rebuilds the architecture."""
from __future__ import annotations

import glob
import os
import shutil
import time

import jax
import numpy as np
from absl import logging

from vlm_jax.interop import clip_bpe, hf, open_clip, preprocess, tensors

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
        cfg = tensors.json_in(path, "config.json") or {}
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


def view_keys(fmt: str, path: str, family: str | None, image_size: int) -> dict:
    """The source's own eval view and pixel statistics as config keys: `family` (open_clip's
    conventions) where named, else a Hugging Face folder's preprocessor_config.json or an
    open_clip folder's open_clip_config.json, else the format's family default."""
    folder = path if os.path.isdir(path) else ""
    if family:
        return preprocess.from_family(family)
    if fmt.startswith("hf_") and (proc := tensors.json_in(folder, "preprocessor_config.json")):
        return preprocess.from_hf(proc, image_size)
    if fmt == "open_clip" and folder and (oc := tensors.json_in(folder, "open_clip_config.json")):
        if "preprocess_cfg" in oc:
            return preprocess.from_open_clip(oc["preprocess_cfg"])
    default = {"hf_clip": "openai", "hf_siglip": "siglip", "open_clip": "openclip"}[fmt]
    logging.info("eval view: open_clip's %s conventions (name another with --preprocess)",
                 default)
    return preprocess.from_family(default)


TOKENIZER_FILES = ".json (tokenizer.json), .model (SentencePiece), .txt.gz or .txt (CLIP's BPE merges)"


def _tokenizer_source(fmt: str, path: str, given: str | None, vocab: int) -> str | None:
    """The tokenizer file a conversion takes: the one given, the folder's own, or for a CLIP
    vocabulary open_clip's shipped BPE merges."""
    if given:
        if not os.path.isfile(given):
            raise FileNotFoundError(f"--tokenizer {given!r} does not exist")
        return given
    folder = path if os.path.isdir(path) else ""
    for name in ("tokenizer.json", "spiece.model"):
        if folder and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    if fmt == "open_clip" and vocab == clip_bpe.VOCAB_SIZE:
        return clip_bpe.shipped_merges()
    return None


def tokenizer_keys(fmt: str, path: str, given: str | None, vocab: int, out: str,
                   hf_cfg: dict) -> dict:
    """Writes the conversion's tokenizer into `out` and returns its config keys. The
    vocabulary size is always recorded, so a config whose tokenizer does not fit the
    checkpoint is refused in one line before anything is restored."""
    keys = {"tokenizer.vocab_size": vocab}
    if fmt == "hf_siglip":
        # SigLIP: no BOS, padded with its pad id (EOS) to the full length, every position read.
        keys.update({"tokenizer.bos": False, "tokenizer.attend_padding": True,
                     "tokenizer.pad_id": int(hf_cfg["text_config"].get("pad_token_id", 1))})
    src = _tokenizer_source(fmt, path, given, vocab)
    if src is None:
        logging.warning("no tokenizer for the %d-entry vocabulary: give --tokenizer (%s)",
                        vocab, TOKENIZER_FILES)
        return keys
    os.makedirs(out, exist_ok=True)
    if src.endswith(".json"):
        dest, name = os.path.join(out, "tokenizer.json"), "hf"
        shutil.copy(src, dest)
    elif src.endswith(".model"):
        dest, name = os.path.join(out, os.path.basename(src)), "sentencepiece"
        shutil.copy(src, dest)
        if fmt == "hf_siglip":          # SiglipTokenizer's own lower-casing and punctuation
            keys["tokenizer.clean"] = "canonicalize"
    elif src.endswith((".txt.gz", ".txt")):
        dest, name = clip_bpe.write(src, os.path.join(out, "tokenizer.json")), "hf"
        keys["tokenizer.clean"] = "lower"     # open_clip's SimpleTokenizer cleaning
    else:
        raise ValueError(f"--tokenizer {src!r}: give {TOKENIZER_FILES}")
    logging.info("tokenizer: %s -> %s", src, dest)
    return {**keys, "tokenizer.name": name, "tokenizer.path": os.path.abspath(dest)}


def convert(path: str, out: str | None = None, act: str = "gelu", head_width: int = 64,
            family: str | None = None, tokenizer: str | None = None):
    """Converts the checkpoint at `path`; returns (config, params as numpy). With `out`, writes
    OUT/checkpoints/0 (params only; `config.init=OUT`), OUT/config.json and the tokenizer
    (`tokenizer_keys`). The config carries the source's eval view (`view_keys`; `family`
    names open_clip's conventions). `act` and `head_width` describe open_clip checkpoints
    (their files do not record them)."""
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
    keys.update(view_keys(fmt, path, family, keys["data.image_size"]))
    vocab = int(params["txt"]["embedding"]["embedding"].shape[0])
    if out:
        keys.update(tokenizer_keys(fmt, path, tokenizer, vocab, out, hf_cfg))
    config = config_lib.defaults()
    for key, value in keys.items():
        config_lib.assign(config, key, value)
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
