"""Filtering: each rule on records built to trip it, the score rules, and scoring with a real
checkpoint checked against an independent embedding computation."""
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_config
from datagen import jpeg, write_records
from helpers import jitted_method
from PIL import Image

from vlm_jax import config as config_lib
from vlm_jax.data import filtering, pipeline


def _recompressed(data, quality=50, scale=0.75):
    img = Image.open(io.BytesIO(data))
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture()
def dataset(tmp_path):
    big = (96, 80)
    exs = [
        {"image": jpeg(0, big), "captions": ["a red bird on a branch"], "label": 0},        # kept
        {"image": jpeg(1, big), "captions": ["bird"], "label": 1},                          # min_words
        {"image": jpeg(2, big), "captions": ["A  red bird on a branch"], "label": 2},       # dup caption
        {"image": _recompressed(jpeg(0, big)), "captions": ["the same bird, smaller"], "label": 3},  # dup image
        {"image": jpeg(4, big), "captions": ["x", "a dog in the snow"], "label": 4},        # kept, 1 caption
        b"\x00 not a record",                                                            # unreadable
    ]
    write_records(str(tmp_path / "a.array_record"), exs[:3])
    write_records(str(tmp_path / "b.array_record"), exs[3:])
    return str(tmp_path / "*.array_record")


def test_rules_drop_and_count(dataset, tmp_path):
    out = str(tmp_path / "out")
    rules = filtering.Rules(min_words=2, dedup_captions=True, phash_distance=6)
    report = filtering.filter_dataset(dataset, out, rules)
    assert report["records"] == 6 and report["kept"] == 2
    assert report["dropped"] == {"unreadable": 1, "min_words": 1, "duplicate_caption": 1,
                                 "duplicate_image": 1, "clip_score": 0}
    assert sorted(os.listdir(out)) == ["a.array_record", "b.array_record", "filter_report.json"]
    caps, labels = pipeline.read_texts(config_lib.source(path=os.path.join(out, "*.array_record")), None)
    assert caps == [["a red bird on a branch"], ["a dog in the snow"]] and labels.tolist() == [0, 4]
    # Rules off: only the unreadable record goes.
    report = filtering.filter_dataset(dataset, str(tmp_path / "all"),
                                      filtering.Rules(dedup_captions=False))
    assert report["kept"] == 5


def test_score_rules(dataset, tmp_path):
    score = lambda exs, caps: np.array([ex["label"] / 10 for ex in exs], np.float32)
    r = filtering.filter_dataset(dataset, str(tmp_path / "o1"),
                                 filtering.Rules(dedup_captions=False, min_score=0.25), score)
    assert r["kept"] == 2 and r["dropped"]["clip_score"] == 3       # labels 3, 4 pass
    r = filtering.filter_dataset(dataset, str(tmp_path / "o2"),
                                 filtering.Rules(dedup_captions=False, keep_fraction=0.4), score)
    assert r["kept"] == 2 and r["kept_scores"]["min"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="need a model"):
        filtering.filter_dataset(dataset, str(tmp_path / "o3"), filtering.Rules(min_score=0.1))


@pytest.mark.slow
def test_scores_from_a_checkpoint_match_an_independent_computation(dataset, data_dir, tmp_path):
    from vlm_jax.train import evaluate, trainer
    workdir = str(tmp_path / "run")
    cfg = tiny_config(data_dir, **{"eval.zeroshot": (), "eval.retrieval": ()})   # 8 steps
    trainer.train(cfg, workdir)
    score = filtering.model_scorer(workdir, resize="shortest")
    _, _, _, examples = filtering.read(dataset)
    exs = [e for e in examples if e is not None]
    caps = [e["captions"] for e in exs]
    got = score(exs, caps)
    # Independent: the model applied directly, on one device, no mesh, no padding.
    from vlm_jax.data import images, tokenizer
    s, params, _ = evaluate.restore(workdir)
    params = jax.device_get(params)
    tok = tokenizer.build(s.config)
    encode_image = jitted_method(s.model, s.model.encode_image)
    encode_text = jitted_method(s.model, s.model.encode_text)
    for ex, cs, g in zip(exs, caps, got):
        img = images.View(cfg.data.image_size).render(ex["image"])[0][None]
        zi = encode_image(params, img)["img/normed"]
        ids, mask = tokenizer.tokenize(tok, cs, cfg.tokenizer.max_len)
        zt = encode_text(params, ids, mask)["txt/normed"]
        assert g == pytest.approx(float(np.max(np.asarray(zt) @ np.asarray(zi)[0])), abs=1e-5)


def test_cli(dataset, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "launch.filter", "--input", dataset, "--output",
                        str(out), "--min_words", "2", "--phash_distance", "6"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["kept"] == 2
    assert json.load(open(out / "filter_report.json"))["dropped"]["duplicate_image"] == 1
    r = subprocess.run([sys.executable, "-m", "launch.filter", "--input", dataset, "--output",
                        str(out), "--keep_fraction", "0.5"], capture_output=True, text=True)
    assert r.returncode != 0 and "need --workdir" in r.stderr
