"""LiT: a locked image tower, seeded from a checkpoint; only the text side learns.

  python -m launch.train --config configs/clip.py --workdir workdirs/clip
  python -m launch.train --config configs/lit.py:workdirs/clip --workdir workdirs/lit

  python -m launch.convert_weights --input /models/clip-vit-base-patch32 --output ckpt/clip_b32
  python -m launch.train --config configs/lit.py:ckpt/clip_b32 --workdir workdirs/lit_b32

The argument is a checkpoint (a training workdir, one of its step folders, or a folder written by
launch.convert_weights) whose image tower and image projection seed this run; the run takes that
tower's architecture (sizes, pooling, activation, pixel normalisation, image size) from the
config.json beside it. The text tower starts fresh. `img/*` is frozen by rule: it stays
bit-identical and holds no optimizer moments. Without an argument the locked tower is random, a
baseline that shows what the pretrained tower brings.
"""
import functools
import os

from configs import quickstart
from vlm_jax import config as config_lib

# What the image tower and its projection are made of (the text tower keeps this recipe's).
IMAGE_KEYS = ("model.image", "model.embed_dim", "model.act", "model.norm_eps", "model.proj_bias",
              "data.image_size")


def _saved_config(path: str):
    """The config.json of the run or conversion that `path` (or its parents) belongs to."""
    path = os.path.abspath(path)
    for _ in range(3):    # OUT, OUT/checkpoints, OUT/checkpoints/<step>
        candidate = os.path.join(path, "config.json")
        if os.path.exists(candidate):
            with open(candidate) as f:
                return config_lib.from_json(f.read(), where=candidate)
        path = os.path.dirname(path)
    return None


def get_config(arg: str | None = None):
    c = quickstart.get_config("softmax")
    c.init = arg or ""
    c.init_rules = (("img/.*", True), ("img_proj/.*", True), (".*", False))
    c.optim.freeze_rules = (("img/.*", True), (".*", False))
    saved = _saved_config(arg) if arg else None
    if saved is not None:
        for key in IMAGE_KEYS:
            config_lib.assign(c, key, functools.reduce(getattr, key.split("."), saved))
    return c
