"""Built-in datasets and the train pipeline's determinism."""
import os

import numpy as np
import pytest
from conftest import tiny_config

from vlm_jax.data import builtin, pipeline
from vlm_jax.data.builtin import shapes
from vlm_jax.data.tokenizer import ByteTokenizer


def test_builtin_datasets_are_real_and_split_as_documented(data_dir):
    d = builtin.info("digits", data_dir)
    assert d["splits"] == {"train": 1437, "test": 360}
    test = pipeline.load_split("digits", "test", data_dir, 32)
    assert test["image"].shape == (360, 32, 32, 3) and test["image"].dtype == np.uint8
    assert sorted(set(test["label"].tolist())) == list(range(10))
    assert "handwritten 7" in {c for caps in test["captions"] for c in caps}
    s = builtin.info("shapes", data_dir)
    assert s["splits"] == {"train": 4000, "test": 500, "val": 500}
    held = {tuple(p) for p in s["held_out"]}
    # Compositional split: held-out colour-shape pairs only in test captions; val holds new
    # scenes of seen pairs.
    caps = {split: pipeline.load_split("shapes", split, data_dir, 64)["captions"]
            for split in ("train", "test", "val")}
    seen = " | ".join(c for split in ("train", "val") for cs in caps[split] for c in cs)
    for color, kind in held:
        assert f"{color} {kind}" not in seen
    assert all(any(f"{c} {k}" in cs[0] for c, k in held) for cs in caps["test"])
    assert {cs[0] for cs in caps["val"]} - {cs[0] for cs in caps["train"]}   # new scenes too
    # Each record's gray_captions are its captions with the colour words left out.
    examples, _ = pipeline.parsed(pipeline.builtin_source("shapes", "train"), data_dir)
    strip = lambda c: " ".join(w for w in c.split() if w.strip(",") not in shapes.COLORS)
    for ex in (examples[i] for i in range(0, 4000, 97)):
        assert ex["gray_captions"] == [strip(c) for c in ex["captions"]]


def test_prepare_is_deterministic_and_atomic(tmp_path, data_dir):
    path = builtin.ensure("shapes", str(tmp_path))
    a = open(os.path.join(path, "test.array_record"), "rb").read()
    b = open(os.path.join(builtin.dataset_dir("shapes", data_dir), "test.array_record"), "rb").read()
    assert a == b
    assert not [p for p in os.listdir(tmp_path / "shapes") if ".tmp-" in p]
    with pytest.raises(ValueError, match="unknown built-in dataset 'mnist'"):
        builtin.ensure("mnist", str(tmp_path))


def _batches(cfg, n, **kw):
    it = iter(pipeline.train_dataset(cfg, ByteTokenizer(), **kw)[0])
    return it, [next(it) for _ in range(n)]


def test_pipeline_batches_are_deterministic_and_resume_exactly(data_dir):
    cfg = tiny_config(data_dir)
    it, first = _batches(cfg, 3)
    b = first[0]
    assert b["image"].shape == (16, 16, 16, 3) and b["image"].dtype == np.uint8
    assert b["tokens"].shape == (16, 24) and b["mask"].dtype == bool
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    _, again = _batches(cfg, 3)
    for x, y in zip(first, again):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    fresh = iter(pipeline.train_dataset(cfg, ByteTokenizer())[0])
    fresh.set_state(state)
    for w in want:
        got = next(fresh)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])


def test_epochs_reshuffle_and_processes_split_the_data(data_dir):
    cfg = tiny_config(data_dir, **{"data.crop_padding": 0})
    cfg.batch_size = 1437  # one batch per epoch (one process)
    _, (e1, e2) = _batches(cfg, 2)
    assert not np.array_equal(e1["image"], e2["image"])              # a new order each epoch
    assert sorted(map(bytes, e1["image"])) == sorted(map(bytes, e2["image"]))   # same examples
    cfg.batch_size = 16
    _, (p0,) = _batches(cfg, 1, process_index=0, process_count=2)
    _, (p1,) = _batches(cfg, 1, process_index=1, process_count=2)
    assert p0["image"].shape[0] == 8
    assert not set(map(bytes, p0["image"])) & set(map(bytes, p1["image"]))
