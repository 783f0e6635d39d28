"""Hugging Face `CLIPModel` and `SiglipModel` state dicts -> our params, and their configs ->
our config keys."""
from __future__ import annotations

import numpy as np

from vlm_jax.interop import tensors as T

HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _act(name: str) -> str:
    if name not in HF_ACTS:
        raise ValueError(f"hidden_act {name!r} has no counterpart here; known: {sorted(HF_ACTS)}")
    return HF_ACTS[name]


def _block(sd: dict, p: str, heads: int) -> dict:
    a = f"{p}.self_attn"
    pair = lambda n: (sd[f"{a}.{n}.weight"], sd[f"{a}.{n}.bias"])
    return {"ln1": T.norm(sd, f"{p}.layer_norm1"), "ln2": T.norm(sd, f"{p}.layer_norm2"),
            "attn": T.attention(pair("q_proj"), pair("k_proj"), pair("v_proj"),
                                pair("out_proj"), heads),
            "mlp": T.mlp(sd, f"{p}.mlp.fc1", f"{p}.mlp.fc2")}


def _encoder(sd: dict, p: str, depth: int, heads: int, final: str) -> dict:
    enc = {f"block{i}": _block(sd, f"{p}.encoder.layers.{i}", heads) for i in range(depth)}
    enc["ln_final"] = T.norm(sd, f"{p}.{final}")
    return enc


def _text(sd: dict, tc: dict) -> dict:
    return {"embedding": {"embedding": sd["text_model.embeddings.token_embedding.weight"]},
            "posemb": sd["text_model.embeddings.position_embedding.weight"],
            "encoder": _encoder(sd, "text_model", tc["num_hidden_layers"],
                                tc["num_attention_heads"], "final_layer_norm")}


def clip_params(sd: dict, cfg: dict) -> dict:
    vc, tc = cfg["vision_config"], cfg["text_config"]
    v = "vision_model.embeddings"
    pos = sd[f"{v}.position_embedding.weight"]
    # CLIP adds position 0 to the class token; ours carries it in the token itself.
    img = {"embedding": {"kernel": T.conv(sd[f"{v}.patch_embedding.weight"])},
           "cls": (sd[f"{v}.class_embedding"] + pos[0])[None, None],
           "posemb": pos[1:],
           "ln_pre": T.norm(sd, "vision_model.pre_layrnorm"),
           "encoder": _encoder(sd, "vision_model", vc["num_hidden_layers"],
                               vc["num_attention_heads"], "post_layernorm")}
    return {"img": img, "txt": _text(sd, tc),
            "img_proj": {"dense": {"kernel": T.dense(sd["visual_projection.weight"])}},
            "txt_proj": {"dense": {"kernel": T.dense(sd["text_projection.weight"])}},
            "scale": {"t": np.asarray(sd["logit_scale"]).reshape(())}}


def clip_config(cfg: dict) -> dict:
    vc, tc = cfg["vision_config"], cfg["text_config"]
    return {**_towers(vc, tc), "model.embed_dim": cfg["projection_dim"],
            "model.image.pool": "cls", "model.image.patch_bias": False,
            "model.image.pre_norm": True,
            "model.text.causal": True, "contrastive.name": "softmax"}


def _towers(vc: dict, tc: dict) -> dict:
    """The config keys both formats read the same way: sizes, activation, epsilon."""
    if _act(vc["hidden_act"]) != _act(tc["hidden_act"]):
        raise ValueError("the two towers use different activations; model.act is shared")
    out = {"data.image_size": vc["image_size"], "tokenizer.max_len": tc["max_position_embeddings"],
           "model.act": _act(vc["hidden_act"]), "model.norm_eps": vc["layer_norm_eps"]}
    for name, c in (("image", vc), ("text", tc)):
        out.update({f"model.{name}.width": c["hidden_size"],
                    f"model.{name}.depth": c["num_hidden_layers"],
                    f"model.{name}.heads": c["num_attention_heads"],
                    f"model.{name}.mlp_dim": c["intermediate_size"]})
    out["model.image.patch_size"] = vc["patch_size"]
    return out


def siglip_params(sd: dict, cfg: dict) -> dict:
    vc, tc = cfg["vision_config"], cfg["text_config"]
    v, h = "vision_model.embeddings", "vision_model.head"
    heads = vc["num_attention_heads"]
    w_in, b_in = sd[f"{h}.attention.in_proj_weight"], sd[f"{h}.attention.in_proj_bias"]
    qkv = list(zip(np.split(w_in, 3), np.split(b_in, 3)))
    out = (sd[f"{h}.attention.out_proj.weight"], sd[f"{h}.attention.out_proj.bias"])
    img = {"embedding": {"kernel": T.conv(sd[f"{v}.patch_embedding.weight"]),
                         "bias": sd[f"{v}.patch_embedding.bias"]},
           "posemb": sd[f"{v}.position_embedding.weight"],
           "encoder": _encoder(sd, "vision_model", vc["num_hidden_layers"], heads,
                               "post_layernorm"),
           "map": {"probe": sd[f"{h}.probe"], "attn": T.attention(*qkv, out, heads),
                   "ln": T.norm(sd, f"{h}.layernorm"), "mlp": T.mlp(sd, f"{h}.mlp.fc1",
                                                                    f"{h}.mlp.fc2")}}
    width = vc["hidden_size"]
    # SigLIP's pooled image features are its embedding: an identity projection keeps them.
    return {"img": img, "txt": _text(sd, tc),
            "img_proj": {"dense": {"kernel": np.eye(width, dtype=np.float32),
                                   "bias": np.zeros(width, np.float32)}},
            "txt_proj": {"dense": {"kernel": T.dense(sd["text_model.head.weight"]),
                                   "bias": sd["text_model.head.bias"]}},
            "scale": {"t": np.asarray(sd["logit_scale"]).reshape(()),
                      "b": np.asarray(sd["logit_bias"]).reshape(())}}


def siglip_config(cfg: dict) -> dict:
    vc, tc = cfg["vision_config"], cfg["text_config"]
    if not vc.get("vision_use_head", True):
        raise ValueError("SigLIP vision towers without the attention-pooling head are not "
                         "supported")
    return {**_towers(vc, tc), "model.embed_dim": vc["hidden_size"],
            "model.image.pool": "map",
            "model.text.causal": False, "model.proj_bias": True, "contrastive.name": "sigmoid"}
