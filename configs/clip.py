"""CLIP: two towers, softmax contrastive loss over all-gathered negatives (the quickstart).

  python -m launch.train --config configs/clip.py --workdir workdirs/clip
"""
from configs import quickstart


def get_config(arg: str | None = None):
    del arg
    return quickstart.get_config("softmax")
