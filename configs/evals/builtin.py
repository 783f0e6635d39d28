"""The built-in datasets: zero-shot, retrieval and both linear probes on digits, retrieval and
the dense probe (what each patch token tells of its object's colour and kind) on shapes: on its
test scenes (each holds a colour-shape pair never seen in training) and on `shapes_seen`, the val
split's new scenes of seen pairs. Runs anywhere (the sets are generated on first use).

  python -m launch.eval --workdir DIR --suite configs/evals/builtin.py
"""
import ml_collections

from vlm_jax import config as config_lib


def get_config():
    s = ml_collections.ConfigDict()
    s.datasets = {"shapes_seen": config_lib.eval_dataset(kind="builtin", path="shapes",
                                                         split="val")}
    s.zeroshot = ("digits",)
    s.retrieval = ("digits", "shapes", "shapes_seen")
    s.linear_probe = ("digits",)
    s.logistic_probe = ("digits",)
    s.dense_probe = ("shapes", "shapes_seen")
    return s
