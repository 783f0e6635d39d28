"""Config schema: unknown keys, wrong types, bad choices and durations fail before compute."""
import sys

import pytest

from vlm_jax import config as config_lib
from vlm_jax.config import ConfigError


def _defaults(**values):
    c = config_lib.defaults()
    c.total_steps = 100
    for key, value in values.items():
        config_lib.assign(c, key, value)
    return c


def test_defaults_and_recipe_validate():
    config_lib.validate(_defaults())
    config_lib.validate(config_lib.defaults())     # no run length: fine until training
    with pytest.raises(ConfigError, match="duration 'total' is not set"):
        config_lib.steps(config_lib.defaults(), "total", steps_per_epoch=1)
    sys.path.insert(0, ".")
    from configs import quickstart
    config_lib.validate(quickstart.get_config())
    assert quickstart.get_config("sigmoid").contrastive.name == "sigmoid"
    # The shapes recipes: each objective set on shapes, the fusion ones matching by scene.
    from configs import shapes
    for arg in shapes.VARIANTS:
        c = shapes.get_config(arg)
        config_lib.validate(c)
        assert c.data.name == "shapes" and (c.itm.groups == "scene") == (c.itm.weight > 0)
    flava = shapes.get_config("flava")
    assert flava.mim.weight > 0 and flava.balance.enabled and flava.itm.groups == "scene"
    with pytest.raises(ValueError, match="choose one of"):
        shapes.get_config("blip")


def test_unknown_key_names_closest_valid_key():
    c = config_lib.defaults()
    c.model.image.widht = 64
    with pytest.raises(ConfigError, match=r"unknown config key 'model.image.widht'.*'model.image.width'"):
        config_lib.validate(c)


def test_wrong_type_and_bad_choice():
    c = config_lib.defaults()
    with pytest.raises(TypeError, match="batch_size"):
        c.batch_size = "big"  # ConfigDict itself refuses a str for an int field
    with pytest.raises(ConfigError, match=r"'contrastive.name' is 'hinge'"):
        c.contrastive.name = "hinge"
        config_lib.validate(c)
    schema = config_lib.defaults()
    bad = config_lib.defaults()
    del bad["seed"]
    bad.seed = "zero"
    with pytest.raises(ConfigError, match=r"'seed' must be int, got str"):
        config_lib.validate(bad, schema)


def test_held_out_sets_name_a_source_that_holds_records_out():
    from configs import web
    c = web.get_config("/d/*.array_record")
    config_lib.validate(c)
    assert (c.data.sources.web.holdout, c.eval.retrieval, c.eval.zeroshot) == (
        0.01, ("web_holdout",), ())
    assert [config_lib.held_out(n, 0.01, 5000) for n in (0, 1, 250, 10**7)] == [0, 1, 3, 5000]
    c.data.sources.web.holdout = 1.0
    with pytest.raises(ConfigError, match=r"'data.sources.web.holdout' is the share"):
        config_lib.validate(c)
    c.data.sources.web.holdout = 0.0
    with pytest.raises(ConfigError, match=r"'data.sources.web.holdout' is 0"):
        config_lib.validate(c)
    c.eval.datasets.web_holdout.path = "webb"
    with pytest.raises(ConfigError, match=r"names source 'webb', which is not in data.sources"):
        config_lib.validate(c)


def test_durations():
    c = _defaults()
    c.total_epochs = 2.0
    with pytest.raises(ConfigError, match="duration 'total' is given twice"):
        config_lib.validate(c)
    config_lib.apply_duration_overrides(c, ["total_epochs"])
    config_lib.validate(c)
    assert c.total_steps is None
    assert config_lib.steps(c, "total", steps_per_epoch=5.6) == 12
    with pytest.raises(ConfigError, match="'total_epochs' needs the size of the training data"):
        config_lib.steps(c, "total", steps_per_epoch=None)
    # Unset durations mean what DURATIONS says; a recipe sets any unit without undoing another.
    assert config_lib.steps(c, "optim.warmup", steps_per_epoch=5.6) == 50
    assert config_lib.steps(c, "eval_every", steps_per_epoch=5.6) is None
    c.optim.warmup_percent = 25.0
    assert config_lib.steps(c, "optim.warmup", steps_per_epoch=5.6, total_steps=12) == 3
    c.total_epochs, c.total_examples = None, 1000
    assert config_lib.steps(c, "total", steps_per_epoch=1) == 4   # ceil(1000 / 256)
    c.total_examples = None
    with pytest.raises(ConfigError, match="duration 'total' is not set"):
        config_lib.steps(c, "total", steps_per_epoch=1)


def _parse(*args):
    """launch.train's config flag parsed in this process, as the command line would."""
    from absl import flags

    from launch import flags as launch_flags
    fv, argv = flags.FlagValues(), ["train", *args]
    launch_flags.define_config(fv, argv)
    fv(argv)
    return launch_flags.config(fv)


def test_every_duration_of_every_recipe_is_settable_from_the_command_line():
    web = "--config=configs/web.py:/nowhere/*.array_record"
    c = _parse(web, "--config.total_steps=4")           # the recipe counts in epochs
    assert (c.total_steps, c.total_epochs) == (4, None)
    c = _parse(web, "--config.total_examples=4096")     # setting a unit clears the others
    assert (c.total_steps, c.total_epochs, c.total_examples) == (None, None, 4096)
    c = _parse("--config=configs/quickstart.py", "--config.total_epochs=2.5",
               "--config.optim.warmup_percent=10", "--config.eval.mlm_every_steps=3")
    assert (c.total_steps, c.total_epochs) == (None, 2.5)
    assert (c.optim.warmup_steps, c.optim.warmup_percent) == (None, 10.0)
    assert c.eval.mlm_every_steps == 3
    for name in config_lib.DURATIONS:
        for unit, value in (("steps", "7"), ("epochs", "0.5"), ("examples", "512"),
                            ("percent", "20")):
            if (name, unit) == ("total", "percent"):
                continue
            c = _parse("--config=configs/quickstart.py", f"--config.{name}_{unit}={value}")
            section, leaf = config_lib._section(c, name)
            assert section[f"{leaf}_{unit}"] == config_lib.UNIT_TYPES[unit](float(value))


def test_cli_rejects_misspelt_key_and_bad_type_before_compute():
    from absl import flags
    with pytest.raises((flags.Error, AttributeError), match="(?s)totl_steps.*total_steps"):
        _parse("--config=configs/quickstart.py", "--config.totl_steps=5")
    with pytest.raises(ConfigError, match=r"'contrastive.name' is 'hinge'.*softmax"):
        _parse("--config=configs/quickstart.py", "--config.contrastive.name=hinge")
    with pytest.raises(flags.Error, match="batch_size"):
        _parse("--config=configs/quickstart.py", "--config.batch_size=abc")


def test_json_round_trip():
    c = _defaults()
    c.contrastive.name = "sigmoid"
    c.optim.freeze_rules = (("img/.*", True), (".*", False))
    back = config_lib.from_json(c.to_json_best_effort())
    assert back.contrastive.name == "sigmoid" and back.optim.freeze_rules == c.optim.freeze_rules
    assert back.mesh.rules == c.mesh.rules
    with pytest.raises(ConfigError, match="unknown config key 'itm.nme' in run/config.json"):
        config_lib.from_json('{"itm": {"nme": "softmax"}}', where="run/config.json")
