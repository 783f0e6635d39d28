"""Config schema: unknown keys, wrong types, bad choices and durations fail before compute."""
import subprocess
import sys

import pytest

from vlm_jax import config as config_lib
from vlm_jax.config import ConfigError


def test_defaults_and_recipe_validate():
    config_lib.validate(config_lib.defaults())
    sys.path.insert(0, ".")
    from configs import quickstart
    config_lib.validate(quickstart.get_config())
    assert quickstart.get_config("sigmoid").loss.name == "sigmoid"


def test_unknown_key_names_closest_valid_key():
    c = config_lib.defaults()
    c.model.image.widht = 64
    with pytest.raises(ConfigError, match=r"unknown config key 'model.image.widht'.*'model.image.width'"):
        config_lib.validate(c)


def test_wrong_type_and_bad_choice():
    c = config_lib.defaults()
    with pytest.raises(TypeError, match="batch_size"):
        c.batch_size = "big"  # ConfigDict itself refuses a str for an int field
    with pytest.raises(ConfigError, match=r"'loss.name' is 'hinge'"):
        c.loss.name = "hinge"
        config_lib.validate(c)
    schema = config_lib.defaults()
    bad = config_lib.defaults()
    del bad["seed"]
    bad.seed = "zero"
    with pytest.raises(ConfigError, match=r"'seed' must be int, got str"):
        config_lib.validate(bad, schema)


def test_durations():
    c = config_lib.defaults()
    c.total_epochs = 2.0
    with pytest.raises(ConfigError, match="duration 'total' is given twice"):
        config_lib.validate(c)
    config_lib.apply_duration_overrides(c, ["total_epochs"])
    config_lib.validate(c)
    assert c.total_steps is None
    assert config_lib.steps(c, "total", steps_per_epoch=5.6) == 12
    c.optim.warmup_steps = None
    c.optim.warmup_percent = 25.0
    assert config_lib.steps(c, "optim.warmup", steps_per_epoch=5.6, total_steps=12) == 3
    c.total_epochs, c.total_examples = None, 1000
    assert config_lib.steps(c, "total", steps_per_epoch=1) == 4   # ceil(1000 / 256)
    c.total_examples = None
    with pytest.raises(ConfigError, match="duration 'total' is not set"):
        config_lib.validate(c)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.train", "--config", "configs/quickstart.py",
                           "--workdir", "/nonexistent/never-created", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_rejects_misspelt_key_and_bad_type_before_compute():
    r = _cli("--config.totl_steps=5")
    assert r.returncode != 0
    assert "totl_steps" in r.stderr and "total_steps" in r.stderr
    r = _cli("--config.loss.name=hinge")
    assert r.returncode != 0 and "loss.name" in r.stderr and "softmax" in r.stderr
    r = _cli("--config.batch_size=abc")
    assert r.returncode != 0 and "batch_size" in r.stderr


def test_json_round_trip():
    c = config_lib.defaults()
    c.loss.name = "sigmoid"
    c.optim.freeze_rules = (("img/.*", True), (".*", False))
    back = config_lib.from_json(c.to_json_best_effort())
    assert back.loss.name == "sigmoid" and back.optim.freeze_rules == c.optim.freeze_rules
    assert back.mesh.rules == c.mesh.rules
    with pytest.raises(ConfigError, match="unknown config key 'loss.nme' in run/config.json"):
        config_lib.from_json('{"loss": {"nme": "softmax"}}', where="run/config.json")
