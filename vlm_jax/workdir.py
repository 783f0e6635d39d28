"""What a training workdir holds besides checkpoints and metrics: the config it was trained with
and the table of which rule placed, froze, decayed and scaled each param."""
from __future__ import annotations

import os

from absl import logging

from vlm_jax import config as config_lib

RULE_TABLE = "param_rules.txt"


def save_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=1, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() != text:
                logging.warning("config differs from the one this workdir was started with; "
                                "the old one is kept as config.json.prev")
                os.replace(path, path + ".prev")
    with open(path, "w") as f:
        f.write(text)


def load_config(workdir: str):
    """The config a workdir was trained with."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
    with open(path) as f:
        return config_lib.from_json(f.read(), where=path)


def write_rule_table(workdir: str, lines: list[str]) -> str:
    """One line per param and rule set (sharding, freeze, weight decay, learning rate)."""
    path = os.path.join(workdir, RULE_TABLE)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)
    return path
