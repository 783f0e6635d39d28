r"""Converts pretrained PyTorch CLIP/SigLIP weights into a checkpoint `config.init` loads.

  python -m launch.convert_weights --input /models/clip-vit-base-patch32 --output ckpt/clip_b32
  python -m launch.convert_weights --input /models/siglip-base-patch16-224 --output ckpt/siglip_b16
  python -m launch.convert_weights --input ViT-B-32.pt --output ckpt/openai_b32 --act quick_gelu
  python -m launch.convert_weights --input mobileclip_s0.pt --output ckpt/m --preprocess mobileclip

--input is a Hugging Face `CLIPModel`/`SiglipModel` folder (config.json and model.safetensors or
pytorch_model.bin, as `save_pretrained` writes them) or an open_clip / OpenAI checkpoint file
(.safetensors, .bin, .pt). Nothing is downloaded. The output holds OUTPUT/checkpoints/0 (params
only), OUTPUT/config.json (the matching model config) and the tokenizer. The preprocessing
travels too: a Hugging Face folder's preprocessor_config.json, an open_clip folder's
open_clip_config.json, or open_clip's conventions for the family --preprocess names (default:
openai/openclip's for open_clip files). The tokenizer: --tokenizer, else the folder's
tokenizer.json or spiece.model, else for CLIP's 49,408-entry vocabulary the BPE merges the
installed open_clip ships. Evaluate it with

  python -m launch.eval --checkpoint OUTPUT --suite configs/evals/NAME.py

and train from it with

  python -m launch.train --config configs/lit.py:OUTPUT --workdir DIR

A Hugging Face decoder-only LM folder (LlamaForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM,
Gemma2ForCausalLM; model.safetensors or a sharded index) converts to OUTPUT/checkpoints/0,
OUTPUT/lm.json (the models.lm config) and its tokenizer.json; `interop.lm.load(OUTPUT)` reads it.
"""
from __future__ import annotations

import os

from absl import app, flags

from launch import runtime

INPUT = flags.DEFINE_string("input", None, "Hugging Face folder or open_clip file.", required=True)
OUTPUT = flags.DEFINE_string("output", None, "Folder for the converted checkpoint.", required=True)
ACT = flags.DEFINE_enum("act", "gelu", ["gelu", "quick_gelu", "gelu_tanh"],
                        "open_clip only: the MLP activation (quick_gelu for OpenAI's weights and "
                        "open_clip's *-quickgelu models).")
HEAD_WIDTH = flags.DEFINE_integer("head_width", 64, "open_clip only: attention head width.")
PREPROCESS = flags.DEFINE_string(
    "preprocess", None, "The eval view and pixel statistics of this open_clip family, replacing "
    "the source's: openai, openclip, siglip, siglip2, clipa, mobileclip, mobileclip2 "
    "(vlm_jax/interop/preprocess.py).")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "The model's tokenizer: a tokenizer.json, a "
                                "SentencePiece .model or CLIP's BPE merges (.txt.gz).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not os.path.exists(INPUT.value):       # before the seconds of importing JAX and PyTorch
        raise FileNotFoundError(f"checkpoint {INPUT.value!r} does not exist")
    import jax
    from absl import logging

    from vlm_jax import interop
    logging.set_verbosity(logging.INFO)
    runtime.quiet_libraries()
    from vlm_jax.interop import lm as lm_interop
    if os.path.isdir(INPUT.value) and lm_interop.is_lm_folder(INPUT.value):
        c, params = lm_interop.convert(INPUT.value)
        where = lm_interop.save(OUTPUT.value, c, params, INPUT.value)
        n = sum(v.size for v in jax.tree.leaves(params))
        print(f"{n / 1e6:.1f}M params -> {where} and {OUTPUT.value}/lm.json")
        print(f"  LM: width {c.width}, depth {c.depth}, heads {c.heads} ({c.kv_heads} kv, "
              f"head dim {c.head_dim}), mlp {c.mlp_dim} {c.act}, vocab {c.vocab_size}, "
              f"tied {c.tie_embeddings}")
        return
    try:
        config, params = interop.convert(INPUT.value, OUTPUT.value, ACT.value, HEAD_WIDTH.value,
                                         PREPROCESS.value, TOKENIZER.value)
    except ImportError as e:        # the interop extra is not installed
        raise ValueError(str(e)) from None
    m = config.model
    n = sum(v.size for v in jax.tree.leaves(params))
    print(f"{n / 1e6:.1f}M params -> {OUTPUT.value}/checkpoints/0 and {OUTPUT.value}/config.json")
    print(f"  image: patch {m.image.patch_size}, width {m.image.width}, depth {m.image.depth}, "
          f"pool {m.image.pool}; text: width {m.text.width}, depth {m.text.depth}, "
          f"causal {m.text.causal}; embed {m.embed_dim}; act {m.act}")
    i, t = m.image, config.tokenizer
    stats = i.pixel_norm if not i.pixel_mean else f"mean {i.pixel_mean} std {i.pixel_std}"
    print(f"  eval view: {i.resize} {config.data.image_size}px, {i.interpolation}, crop "
          f"fraction {i.crop_fraction}, pixels {stats}")
    print(f"  tokenizer: {t.name} {t.path or ''} ({t.vocab_size or 'no file:'} ids"
          f"{', clean ' + t.clean if t.clean != 'none' else ''})")
    print(f"train from it: python -m launch.train --config configs/lit.py:{OUTPUT.value} "
          "--workdir DIR")


if __name__ == "__main__":
    runtime.run(main, "launch.convert_weights")
