"""Flags shared by the entry points."""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import runtime
from vlm_jax import config as config_lib



def define_config(flag_values=flags.FLAGS, argv=None):
    """The --config flag (`argv`: the command line it is parsed from; default sys.argv)."""
    return config_flags.DEFINE_config_file(
        "config", None, "Recipe file, optionally with an argument: configs/quickstart.py[:arg]. "
        "Override any key with --config.KEY=VALUE.", flag_values=flag_values, lock_config=True,
        sys_argv=argv)


CONFIG = define_config()
WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl and config.json.")


def config(flag_values=flags.FLAGS):
    """The recipe with command-line overrides applied and checked (`flag_values`: parsed flags
    holding a `define_config` flag)."""
    try:
        cfg = flag_values["config"].value
        overridden = config_flags.get_override_values(flag_values["config"])
        cfg.unlock()
    except OSError as e:        # the recipe file could not be loaded: its last line says why
        raise config_lib.ConfigError(f"--config: {runtime.last_line(e)}") from None
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
    """The common start of an entry point: argument checks, then `runtime.set_up()`.
    Returns the workdir."""
    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not WORKDIR.value:
        raise app.UsageError("--workdir is required")
    runtime.set_up()
    return WORKDIR.value
