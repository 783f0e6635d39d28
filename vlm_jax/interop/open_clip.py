"""open_clip (and OpenAI CLIP) ViT checkpoints -> our params and config keys.

These checkpoints hold no config: sizes are read off the tensors' shapes. Two things cannot be:
the attention head width (64 in every released model) and the activation, QuickGELU for
OpenAI's weights and for open_clip's `*-quickgelu` models, exact GELU for the rest."""
from __future__ import annotations

import re

import numpy as np

from vlm_jax.interop import tensors as T


def _depth(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if not found:
        raise ValueError(f"no '{prefix}transformer.resblocks.*' tensors: not an open_clip ViT")
    return max(found) + 1


def _block(sd: dict, p: str, heads: int) -> dict:
    qkv = list(zip(np.split(sd[f"{p}.attn.in_proj_weight"], 3),
                   np.split(sd[f"{p}.attn.in_proj_bias"], 3)))
    out = (sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"])
    return {"ln1": T.norm(sd, f"{p}.ln_1"), "ln2": T.norm(sd, f"{p}.ln_2"),
            "attn": T.attention(*qkv, out, heads), "mlp": T.mlp(sd, f"{p}.mlp.c_fc",
                                                                f"{p}.mlp.c_proj")}


def _encoder(sd: dict, prefix: str, heads: int, final: str) -> dict:
    enc = {f"block{i}": _block(sd, f"{prefix}transformer.resblocks.{i}", heads)
           for i in range(_depth(sd, prefix))}
    enc["ln_final"] = T.norm(sd, final)
    return enc


def params(sd: dict, head_width: int = 64) -> dict:
    unsupported = [k for k in sd if k.startswith(("visual.attn_pool", "visual.trunk",
                                                  "text.transformer"))]
    if unsupported:
        raise ValueError(f"unsupported open_clip architecture (e.g. {unsupported[0]}): only "
                         "ViT image towers with the built-in text transformer convert")
    iw, tw = sd["visual.conv1.weight"].shape[0], sd["ln_final.weight"].shape[0]
    pos = sd["visual.positional_embedding"]
    img = {"embedding": {"kernel": T.conv(sd["visual.conv1.weight"])},
           "cls": (sd["visual.class_embedding"] + pos[0])[None, None],
           "posemb": pos[1:], "ln_pre": T.norm(sd, "visual.ln_pre"),
           "encoder": _encoder(sd, "visual.", iw // head_width, "visual.ln_post")}
    txt = {"embedding": {"embedding": sd["token_embedding.weight"]},
           "posemb": sd["positional_embedding"],
           "encoder": _encoder(sd, "", tw // head_width, "ln_final")}
    return {"img": img, "txt": txt,
            # open_clip multiplies by these ([width, embed]): already Dense kernels.
            "img_proj": {"dense": {"kernel": sd["visual.proj"]}},
            "txt_proj": {"dense": {"kernel": sd["text_projection"]}},
            "scale": {"t": np.asarray(sd["logit_scale"]).reshape(())}}


def config(sd: dict, act: str = "gelu", head_width: int = 64) -> dict:
    iw, tw = sd["visual.conv1.weight"].shape[0], sd["ln_final.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    return {"data.image_size": grid * patch, "model.image.patch_size": patch,
            "model.image.width": iw, "model.image.depth": _depth(sd, "visual."),
            "model.image.heads": iw // head_width,
            "model.image.mlp_dim": sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "model.text.width": tw, "model.text.depth": _depth(sd, ""),
            "model.text.heads": tw // head_width,
            "model.text.mlp_dim": sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "tokenizer.max_len": sd["positional_embedding"].shape[0],
            "model.embed_dim": sd["text_projection"].shape[1], "model.act": act,
            "model.norm_eps": 1e-5, "model.image.pool": "cls", "model.image.patch_bias": False,
            "model.image.pre_norm": True,
            "model.text.causal": True, "contrastive.name": "softmax"}
