"""vlm_jax: pretraining vision-language models with JAX on device meshes."""
__version__ = "0.1.0"
