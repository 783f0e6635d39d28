"""SigLIP: two towers, pairwise sigmoid loss (t' = log 10, b = -10), all-gathered negatives.

  python -m launch.train --config configs/siglip.py --workdir workdirs/siglip

On large meshes set --config.loss.impl=ring: the same loss with O(b^2) memory per device.
"""
from configs import quickstart


def get_config(arg: str | None = None):
    del arg
    # SigLIP pools the image with an attention head (model.image.pool=map); in runs this short
    # mean pooling learns much faster (docs/BENCHMARKS.md), so the recipe keeps it.
    return quickstart.get_config("sigmoid")
