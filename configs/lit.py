"""LiT: a locked image tower, seeded from a trained run; only the text side learns.

  python -m launch.train --config configs/clip.py --workdir workdirs/clip
  python -m launch.train --config configs/lit.py:workdirs/clip --workdir workdirs/lit

The argument is the checkpoint (a workdir or one of its step folders) whose image tower and image
projection seed this run; the text tower starts fresh. `img/*` is frozen by rule: it stays
bit-identical and holds no optimizer moments. Without an argument the locked tower is random, a
baseline that shows what the pretrained tower brings.
"""
from configs import quickstart


def get_config(arg: str | None = None):
    c = quickstart.get_config("softmax")
    c.init = arg or ""
    c.init_rules = (("img/.*", True), ("img_proj/.*", True), (".*", False))
    c.optim.freeze_rules = (("img/.*", True), (".*", False))
    return c
