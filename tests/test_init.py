"""Starting points: config.init (partial params by rules) and config.resume (another run).
A run initialised from a checkpoint through the trainer, its image tower locked: the LiT test
in test_interop.py."""
import json

import jax
import numpy as np
import pytest
from conftest import tiny_config

from vlm_jax.setup import Setup
from vlm_jax.train import checkpoint, trainer


def _cfg(data_dir, **kw):
    """The suite's tiny run (8 steps, its programs shared with other tests), no evaluation."""
    return tiny_config(data_dir, **{"log_every_steps": 1, "eval.zeroshot": (),
                                    "eval.retrieval": (), **kw})


@pytest.fixture(scope="module")
def run_a(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("a"))
    trainer.train(_cfg(data_dir), workdir)
    return workdir


def _flat(tree):
    from vlm_jax import rules
    return {rules.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_init_errors_list_missing_and_misshapen(run_a, data_dir):
    s = Setup(_cfg(data_dir, **{"model.embed_dim": 24}))
    params = s.abstract_params()             # the target's shapes are what is checked
    loaded, _ = checkpoint.read_params(run_a)
    with pytest.raises(checkpoint.InitError, match=r"(?s)0 selected params are missing.*"
                       r"have another shape.*shape img_proj/dense/kernel: \(32, 16\) in .*\(32, 24\)"):
        checkpoint.load_params(params, loaded, ((".*", True),), "run A")
    partial = {"img": loaded["img"]}
    with pytest.raises(checkpoint.InitError, match=r"missing txt/"):
        checkpoint.load_params(params, partial, (("img_proj/.*", False), ("txt_proj/.*", False),
                                                 ("scale/.*", False), (".*", True)))
    out, report = checkpoint.load_params(params, loaded, (("img/.*", True), (".*", False)))
    assert report["loaded"] and all(p.startswith("img/") for p in report["loaded"])
    assert not report["unexpected"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.read_params("/nonexistent/run")


@pytest.mark.slow
def test_resume_from_another_run(run_a, data_dir, tmp_path):
    c = str(tmp_path / "c")
    trainer.train(_cfg(data_dir, **{"resume": run_a, "total_steps": 10}), c)
    rows = [json.loads(line) for line in open(f"{c}/metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [9, 10]    # continued at step 8


def test_failed_save_is_named_and_earlier_checkpoints_survive(tmp_path):
    import os
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, {"x": np.arange(3.0)})
    # The filesystem refuses the next save: its folder is no longer a folder.
    os.rename(tmp_path / "checkpoints", tmp_path / "aside")
    (tmp_path / "checkpoints").write_text("")
    with pytest.raises(checkpoint.CheckpointSaveError, match=r"saving checkpoint step 2 in .*"
                       r"checkpoints failed: NotADirectoryError"):
        ckpt.save(2, {"x": np.arange(3.0)})
    os.remove(tmp_path / "checkpoints")
    os.rename(tmp_path / "aside", tmp_path / "checkpoints")
    again = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    assert again.manager.all_steps() == [1]
    np.testing.assert_array_equal(again.restore(1, {"x": np.zeros(3)})["x"], np.arange(3.0))


def test_init_converts_between_looped_and_scanned_blocks(run_a, data_dir):
    """Run A has looped blocks (block0, ...); a scanned model loads them stacked, and back."""
    from vlm_jax.models import layout
    loaded, _ = checkpoint.read_params(run_a)
    scanned = Setup(_cfg(data_dir, **{"model.scan": True}))
    # Every param is loaded: their shapes and shardings are all the target needs.
    params, report = checkpoint.load_params(scanned.abstract_params(), loaded, ((".*", True),))
    assert not report["kept_init"] and not report["unexpected"]
    fp = _flat(params)
    assert "img/encoder/blocks/mlp/fc1/kernel" in fp and "img/encoder/block0/mlp/fc1/kernel" not in fp
    want = _flat(layout.to_scanned(loaded))
    assert fp.keys() == want.keys()
    for p in fp:
        np.testing.assert_array_equal(fp[p], want[p], err_msg=p)
    looped = Setup(_cfg(data_dir))
    back, _ = checkpoint.load_params(looped.abstract_params(), jax.device_get(params),
                                     ((".*", True),))
    fa, fb = _flat(loaded), _flat(back)
    assert fa.keys() == fb.keys()
    for p in fa:
        np.testing.assert_array_equal(fa[p], fb[p], err_msg=p)
