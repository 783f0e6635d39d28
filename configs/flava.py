"""FLAVA-style: the ALBEF objectives (ITC + ITM + MLM) plus masked image modelling (MAE: 75% of
the patches hidden from the image tower, a light decoder predicts their normalised pixels).

  python -m launch.train --config configs/flava.py --workdir workdirs/flava

Four losses of different scales are balanced: each is divided by its running mean, so the
weights say how hard each pulls.
"""
from configs import albef


def get_config(arg: str | None = None):
    c = albef.get_config(arg)
    c.mim.weight = 1.0
    c.balance.enabled = True
    return c
