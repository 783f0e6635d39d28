"""The built-in datasets: zero-shot, retrieval and both linear probes on digits, retrieval and
the dense probe (what each patch token tells of its object's colour and kind) on shapes. Runs
anywhere (the sets are generated on first use).

  python -m launch.eval --workdir DIR --suite configs/evals/builtin.py
"""
import ml_collections


def get_config():
    s = ml_collections.ConfigDict()
    s.zeroshot = ("digits",)
    s.retrieval = ("digits", "shapes")
    s.linear_probe = ("digits",)
    s.logistic_probe = ("digits",)
    s.dense_probe = ("shapes",)
    return s
