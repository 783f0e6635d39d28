"""Reading PyTorch state dicts from local files into float32 numpy arrays, and the layout
changes between torch's Linear/Conv/attention weights and our Dense/Einsum/Conv kernels."""
from __future__ import annotations

import json
import os

import numpy as np


def json_in(folder: str, name: str) -> dict | None:
    """FOLDER/NAME parsed, or None where there is no such file."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("converting PyTorch checkpoints needs the interop extra: "
                          "pip install 'vlm_jax[interop]'") from None
    return torch


def read(path: str) -> dict[str, np.ndarray]:
    """A `.safetensors` file or a torch file (`.bin`, `.pt`, `.pth`: a state dict, or a dict
    holding one under `state_dict`/`model`) -> {name: float32 array}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    torch = _torch()
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        tensors = load_file(path)
    else:
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable torch checkpoint ({e})") from e
        for key in ("state_dict", "model"):
            if isinstance(tensors, dict) and isinstance(tensors.get(key), dict):
                tensors = tensors[key]
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return {k: v.detach().float().cpu().numpy() for k, v in tensors.items()
            if hasattr(v, "detach")}


def dense(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Dense kernel [in, out]."""
    return w.T


def heads_in(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k/v Linear weight [D, D_in] -> our Einsum kernel [D_in, heads, head_dim]."""
    return w.T.reshape(w.shape[1], heads, w.shape[0] // heads)


def heads_bias(b: np.ndarray, heads: int) -> np.ndarray:
    return b.reshape(heads, -1)


def heads_out(w: np.ndarray, heads: int) -> np.ndarray:
    """out-projection Linear weight [D, D] -> our Einsum kernel [heads, head_dim, D]."""
    return w.T.reshape(heads, w.shape[1] // heads, w.shape[0])


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [out, in, kh, kw] -> flax Conv kernel [kh, kw, in, out]."""
    return w.transpose(2, 3, 1, 0)


def norm(sd: dict, prefix: str) -> dict:
    return {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}


def attention(q, k, v, out, heads: int) -> dict:
    """(weight, bias) pairs of the q, k, v and output projections -> our `attn` params."""
    p = {n: {"kernel": heads_in(w, heads), "bias": heads_bias(b, heads)}
         for n, (w, b) in (("q", q), ("k", k), ("v", v))}
    p["out"] = {"kernel": heads_out(out[0], heads), "bias": out[1]}
    return p


def mlp(sd: dict, fc1: str, fc2: str) -> dict:
    return {"fc1": {"kernel": dense(sd[f"{fc1}.weight"]), "bias": sd[f"{fc1}.bias"]},
            "fc2": {"kernel": dense(sd[f"{fc2}.weight"]), "bias": sd[f"{fc2}.bias"]}}
