"""flax.linen models; they know logical axis names, never meshes."""
from vlm_jax.models.vlm import TwoTower, build

__all__ = ["TwoTower", "build"]
