"""flax.linen models; they know logical axis names, never meshes."""
from vlm_jax.models.vlm import VisionLanguageModel, build

__all__ = ["VisionLanguageModel", "build"]
