"""FLIP: the quickstart CLIP with half of each image's patches dropped for the first 90% of the
run, then the last 10% with every patch (FLIP's unmasked tuning): two stages of one schedule.
A masked step costs about 0.6 of a plain one here, and FLIP spends what it saves on steps: 208
(the quickstart's 160 plus 30%), still in less time than the quickstart's run.

  python -m launch.train --config configs/flip.py --workdir workdirs/flip_masked
  python -m launch.train --config configs/flip.py:workdirs/flip_masked --workdir workdirs/flip

Without an argument: the masked stage, which stops at 90% of the steps. With the masked stage's
workdir: the unmasked stage, continuing its params, optimizer state, data position and schedule.
"""
from configs import quickstart

MASKED_PERCENT = 90
STEPS = 208


def masked(c):
    c.model.image.patch_dropout = 0.5
    c.stop_at_percent = MASKED_PERCENT


def get_config(arg: str | None = None):
    return quickstart.two_stages(arg, masked, STEPS)
