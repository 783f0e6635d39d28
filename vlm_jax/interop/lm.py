"""Hugging Face decoder-only LMs (LlamaForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM,
Gemma2ForCausalLM) as `models.lm.LM` params, read tensor by tensor from `model.safetensors` or
a sharded `model.safetensors.index.json` + shards, so host memory holds one tensor at a time
beside the converted params. An architecture or option the model cannot express is refused,
named."""
from __future__ import annotations

import json
import os

import numpy as np

from vlm_jax.interop.tensors import json_in
from vlm_jax.models.lm import LMConfig

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM")


def lm_config(hf: dict) -> LMConfig:
    """Our LMConfig for a Hugging Face config.json (a dict)."""
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} does not convert; supported: "
                         f"{', '.join(ARCHITECTURES)}")
    gemma = arch.startswith("Gemma")
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    llama3 = ()
    if kind == "llama3":
        llama3 = (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
                  rope["original_max_position_embeddings"])
    elif kind != "default":
        raise ValueError(f"{arch}: rope type {kind!r} does not convert (default and llama3 do)")
    for key in ("mlp_bias",) + (("attention_bias",) if arch == "LlamaForCausalLM" else ()):
        if hf.get(key):
            raise ValueError(f"{arch}: {key}=True does not convert")
    if arch == "Qwen2ForCausalLM" and hf.get("use_sliding_window"):
        raise ValueError("Qwen2ForCausalLM: use_sliding_window=True does not convert")
    act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
    act = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act)
    extra = {}
    if arch == "Gemma2ForCausalLM":
        types = hf.get("layer_types")
        want = ["sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(hf["num_hidden_layers"])]
        if types and list(types) != want:
            raise ValueError("Gemma2ForCausalLM: layer_types other than alternating sliding "
                             "and full attention do not convert")
        extra = dict(query_scale=hf["query_pre_attn_scalar"] ** -0.5,
                     attn_softcap=hf.get("attn_logit_softcapping") or 0.0,
                     final_softcap=hf.get("final_logit_softcapping") or 0.0,
                     sliding_window=hf.get("sliding_window") or 0, post_norms=True)
    return LMConfig(
        vocab_size=hf["vocab_size"], width=width, depth=hf["num_hidden_layers"], heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or width // heads, mlp_dim=hf["intermediate_size"], act=act,
        norm_eps=hf.get("rms_norm_eps", 1e-6), norm_offset=1.0 if gemma else 0.0,
        rope_theta=float(theta), rope_llama3=llama3, qkv_bias=arch == "Qwen2ForCausalLM",
        tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)), embed_scale=gemma, **extra)


def _tensors(folder: str):
    """(name -> a function reading that tensor as float32 numpy) over the folder's files."""
    from safetensors import safe_open
    if index := json_in(folder, "model.safetensors.index.json"):
        where = {k: os.path.join(folder, v) for k, v in index["weight_map"].items()}
    elif os.path.isfile(single := os.path.join(folder, "model.safetensors")):
        with safe_open(single, "np") as f:
            where = dict.fromkeys(f.keys(), single)
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")

    def read(name):
        if name not in where:
            raise ValueError(f"{folder}: the checkpoint has no tensor {name!r}")
        with safe_open(where[name], "pt") as f:   # bfloat16 reads through torch
            return f.get_tensor(name).float().numpy()
    return where, read


def convert(folder: str) -> tuple[LMConfig, dict]:
    """(LMConfig, params) of a Hugging Face LM folder (config.json + safetensors)."""
    hf = json_in(folder, "config.json")
    if hf is None:
        raise FileNotFoundError(f"{folder}: no config.json")
    c = lm_config(hf)
    names, read = _tensors(folder)
    gemma2 = c.post_norms
    params = {"embed": {"embedding": read("model.embed_tokens.weight")},
              "ln_final": {"scale": read("model.norm.weight")}}
    if not c.tie_embeddings:
        params["lm_head"] = {"kernel": read("lm_head.weight").T}
    norms = ({"input_layernorm": "ln_attn", "post_attention_layernorm": "ln_attn_post",
              "pre_feedforward_layernorm": "ln_mlp", "post_feedforward_layernorm": "ln_mlp_post"}
             if gemma2 else {"input_layernorm": "ln_attn", "post_attention_layernorm": "ln_mlp"})
    for i in range(c.depth):
        pre = f"model.layers.{i}."
        block = {ours: {"scale": read(f"{pre}{theirs}.weight")} for theirs, ours in norms.items()}
        attn = {}
        for name, heads in (("q", c.heads), ("k", c.kv_heads), ("v", c.kv_heads)):
            w = read(f"{pre}self_attn.{name}_proj.weight")           # [heads * hd, width]
            attn[name] = {"kernel": w.T.reshape(c.width, heads, c.head_dim)}
            if c.qkv_bias:
                attn[name]["bias"] = read(f"{pre}self_attn.{name}_proj.bias").reshape(
                    heads, c.head_dim)
        w = read(f"{pre}self_attn.o_proj.weight")                    # [width, heads * hd]
        attn["out"] = {"kernel": w.T.reshape(c.heads, c.head_dim, c.width)}
        block["attn"] = attn
        block["mlp"] = {n: {"kernel": read(f"{pre}mlp.{n}_proj.weight").T}
                        for n in ("gate", "up", "down")}
        params[f"block{i}"] = block
    used = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    left = [n for n in names if n not in used and not n.startswith("model.layers.")
            and "rotary_emb" not in n]
    if left:
        raise ValueError(f"{folder}: tensors this conversion does not read: {left[:5]}")
    return c, _as_float32(params)


def _as_float32(tree):
    if isinstance(tree, dict):
        return {k: _as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, np.float32)


def is_lm_folder(path: str) -> bool:
    """Whether `path` is a Hugging Face folder of a supported decoder-only LM."""
    hf = json_in(path, "config.json") or {}
    return (hf.get("architectures") or [""])[0] in ARCHITECTURES


def save(out: str, config: LMConfig, params: dict, source: str | None = None) -> str:
    """OUT/checkpoints/0 (params only), OUT/lm.json (the LMConfig) and, from the `source`
    folder, its tokenizer.json; returns the checkpoint folder."""
    import dataclasses
    import shutil

    from vlm_jax.train import checkpoint
    where = checkpoint.write_params(out, params)
    with open(os.path.join(out, "lm.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=1)
    if source and os.path.isfile(tok := os.path.join(source, "tokenizer.json")):
        shutil.copy(tok, os.path.join(out, "tokenizer.json"))
    return where


def load(folder: str) -> tuple[LMConfig, dict]:
    """(LMConfig, params) of a folder `save` wrote."""
    from vlm_jax.train import checkpoint
    raw = json_in(folder, "lm.json")
    if raw is None:
        raise FileNotFoundError(f"{folder}: no lm.json (write one with launch.convert_weights)")
    raw["rope_llama3"] = tuple(raw.get("rope_llama3", ()))
    params, _ = checkpoint.read_params(folder)
    return LMConfig(**raw), params
