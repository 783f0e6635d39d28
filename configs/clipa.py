"""CLIPA's inverse scaling: the quickstart CLIP trained at half the image size (a quarter of the
patches) and captions cut to 16 tokens for the first 80% of the run, then at full size and
length for the rest: two stages of one schedule.

  python -m launch.train --config configs/clipa.py --workdir workdirs/clipa_low
  python -m launch.train --config configs/clipa.py:workdirs/clipa_low --workdir workdirs/clipa

Without an argument: the low-resolution stage, which stops at 80% of the steps. With its
workdir: the full stage, continuing its params, optimizer state, data position and schedule; the
image position embeddings are resampled to the full grid and the text ones extended (the new
positions from the fresh initialisation; vlm_jax/models/posemb.py).
"""
from configs import quickstart

LOW_PERCENT = 80


def low(c):
    patch = c.model.image.patch_size      # half the size, whole patches (So400m: 378 -> 182)
    c.data.image_size = c.data.image_size // 2 // patch * patch
    c.tokenizer.max_len = 16
    c.stop_at_percent = LOW_PERCENT


def get_config(arg: str | None = None):
    return quickstart.two_stages(arg, low)
