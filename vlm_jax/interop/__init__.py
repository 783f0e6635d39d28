"""Pretrained towers from PyTorch checkpoints: Hugging Face `CLIPModel` / `SiglipModel` folders
and open_clip ViT checkpoints -> our param tree, model config and an Orbax checkpoint that
`config.init` loads. Needs the `interop` extra (torch, safetensors, transformers)."""
from vlm_jax.interop.convert import convert, detect, load_state_dict  # noqa: F401
