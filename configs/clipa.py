"""CLIPA's inverse scaling: the quickstart CLIP trained at half the image size (a quarter of the
patches) and captions cut to 16 tokens for the first 60% of the run, then at full size and
length for the rest: two stages of one schedule. A low-resolution step costs about a third of a
full one, and the run spends part of that on steps: 208 (the quickstart's 160 plus 30%). The
full-size stage is 40% because towers this small adapt slowly to the finer grid (at 80%, the
last fifth of the cosine schedule left them at 0.778 zero-shot: docs/BENCHMARKS.md).

  python -m launch.train --config configs/clipa.py --workdir workdirs/clipa_low
  python -m launch.train --config configs/clipa.py:workdirs/clipa_low --workdir workdirs/clipa

Without an argument: the low-resolution stage, which stops at 60% of the steps. With its
workdir: the full stage, continuing its params, optimizer state, data position and schedule; the
image position embeddings are resampled to the full grid and the text ones extended (the new
positions from the fresh initialisation; vlm_jax/models/posemb.py).
"""
from configs import quickstart

LOW_PERCENT = 60
STEPS = 208


def low(c):
    patch = c.model.image.patch_size      # half the size, whole patches (So400m: 378 -> 182)
    c.data.image_size = c.data.image_size // 2 // patch * patch
    c.tokenizer.max_len = 16
    c.stop_at_percent = LOW_PERCENT


def get_config(arg: str | None = None):
    return quickstart.two_stages(arg, low, STEPS)
