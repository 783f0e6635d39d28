"""Quickstart: a 1.7M-param CLIP on the built-in handwritten digits, a few minutes on 2 CPU cores.

  python -m launch.train --config configs/quickstart.py --workdir workdirs/quickstart
  python -m launch.train --config configs/quickstart.py:sigmoid --workdir workdirs/siglip

The optional argument picks the loss (softmax | sigmoid). Evaluates zero-shot digits
classification and digits/shapes retrieval at the end.
"""
from vlm_jax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.defaults()
    c.contrastive.name = arg or "softmax"
    c.data.name = "digits"
    c.data.crop_padding = 0     # in a run this short, crops cost more accuracy than they add
    c.batch_size = 256
    c.total_steps = 160
    c.log_every_steps = 10
    c.checkpoint_every_steps = 40
    c.optim.warmup_steps = 50
    return c


def two_stages(arg: str | None, first_stage, total_steps: int):
    """The quickstart as two stages of one schedule of `total_steps`: without `arg`, the first
    stage (`first_stage(config)` sets what differs and where it stops); with the first stage's
    workdir, the rest of the run, continuing it (config.resume)."""
    c = get_config()
    c.total_steps = total_steps
    if arg:
        c.resume = arg
    else:
        first_stage(c)
    return c
