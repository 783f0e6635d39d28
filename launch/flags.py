"""Flags shared by the entry points."""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch.runtime import enable_compilation_cache, quiet_libraries
from vlm_jax import config as config_lib

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, optionally with an argument: configs/quickstart.py[:arg]. "
    "Override any key with --config.KEY=VALUE.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl and config.json.")


def config():
    """The recipe with command-line overrides applied and checked."""
    cfg = CONFIG.value
    overridden = config_flags.get_override_values(flags.FLAGS["config"])
    cfg.unlock()
    config_lib.apply_duration_overrides(cfg, _flatten(overridden))
    cfg.lock()
    config_lib.validate(cfg)
    return cfg


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.extend(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k])
    return out


def start(argv) -> str:
    """The common start of an entry point: argument checks, quiet logs, compilation cache.
    Returns the workdir."""
    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not WORKDIR.value:
        raise app.UsageError("--workdir is required")
    quiet_libraries()
    enable_compilation_cache()
    return WORKDIR.value
