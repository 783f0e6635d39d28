"""2 x 2 over the quickstart: learning rate x crop jitter.

  python -m launch.sweep --sweep configs/sweeps/quickstart.py --run local
"""
from vlm_jax import sweeps


def get_sweep():
    return sweeps.Sweep(
        config="configs/quickstart.py",
        points=sweeps.grid(**{"optim.lr": [1e-3, 3e-3], "data.crop_padding": [0, 2]}))
