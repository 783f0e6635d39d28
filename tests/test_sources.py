"""Sources, transforms, bad data, mixtures and eval pipelines over real JPEG shards."""
import collections

import numpy as np
import pytest
from absl import flags
from conftest import tiny_config
from datagen import good_examples, jpeg, truncated, write_records

from vlm_jax import config as config_lib
from vlm_jax.data import images, pipeline, sources
from vlm_jax.data.tokenizer import ByteTokenizer
from vlm_jax.train import checkpoint


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of 24 good examples each; the second also holds one bad record per kind."""
    root = tmp_path_factory.mktemp("shards")
    good = good_examples("cat", 48)
    bad = [
        {"image": truncated(jpeg(100)), "captions": ["a truncated jpeg"]},   # image
        {"image": b"\x89PNG not really", "captions": ["garbage bytes"]},       # image
        {"image": jpeg(101), "captions": ["   ", ""]},                         # caption
        {"image": jpeg(102)},                                                  # caption
        b"\xc1 not msgpack",                                                   # record
        {"image": jpeg(103), "captions": ["a box past the edge"],              # region
         "regions": [{"box": [0, 0, 30, 30], "caption": "fine"},
                     {"box": [10, 10, 60, 20], "caption": "wider than the 48 px image"}]},
    ]
    a = write_records(str(root / "web-00000.array_record"), good[:24])
    b = write_records(str(root / "web-00001.array_record"), good[24:30] + bad + good[30:])
    return root, a, b


def _cfg(data_dir, pattern, **kw):
    cfg = tiny_config(data_dir, **{"data.crop_padding": 0, **kw})
    cfg.data.sources.web = config_lib.source(path=pattern)
    config_lib.validate(cfg)
    return cfg


def _captions(batch):
    tok = ByteTokenizer()
    return [tok.decode(row[m]) for row, m in zip(batch["tokens"], batch["mask"])]


def test_bad_records_are_skipped_and_counted(shards, data_dir):
    root, _, _ = shards
    cfg = _cfg(data_dir, str(root / "web-*.array_record"))
    cfg.batch_size = 48   # one epoch of the good examples per batch
    it, n = pipeline.train_dataset(cfg, ByteTokenizer())
    assert n == 54
    batches = [next(iter(it)) for _ in range(1)]
    b = batches[0]
    assert b["image"].shape == (48, 16, 16, 3)
    counts = {k: int(b[k]) for k in pipeline.SKIP_KEYS}
    assert counts == {"skipped_record": 1, "skipped_image": 2, "skipped_caption": 2,
                      "skipped_region": 1}
    seen = sorted(int(c.split()[-1]) for c in _captions(b))
    assert seen == list(range(48))        # every good example exactly once in the epoch


def test_strict_mode_names_file_and_index(shards, data_dir):
    root, _, b = shards
    cfg = _cfg(data_dir, str(root / "web-*.array_record"), **{"data.strict": True})
    it = iter(pipeline.train_dataset(cfg, ByteTokenizer())[0])
    with pytest.raises(sources.BadRecordError, match=r"record #(6|7|8|9|10|11) of .*web-00001"):
        for _ in range(10):
            next(it)


def test_missing_files_and_bad_source_config_are_named(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        pipeline.train_dataset(_cfg(data_dir, str(tmp_path / "nothing-here*")), ByteTokenizer())
    cfg = tiny_config(data_dir)
    cfg.data.sources.web = config_lib.source(path="x", crop="squash")
    with pytest.raises(config_lib.ConfigError, match="data.sources.web.crop"):
        config_lib.validate(cfg)
    with pytest.raises(config_lib.ConfigError, match="did you mean 'weight'"):
        config_lib.source(path="x", wieght=2.0)


def test_crops():
    data = jpeg(7, size=(320, 200))
    rng = np.random.default_rng(0)
    for kind in images.CROPS:
        out = images.render(data, 24, kind, rng, 0.3)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert images.crop_box("center", 320, 200) == (60.0, 0.0, 260.0, 200.0)
    boxes = [images.crop_box("random_resized", 320, 200, rng, 0.3) for _ in range(200)]
    areas = np.array([(r - l) * (b - t) for l, t, r, b in boxes]) / (320 * 200)
    assert areas.min() >= 0.3 - 1e-9 and areas.max() <= 1 + 1e-9 and areas.std() > 0.1
    assert all(0 <= l < r <= 320 and 0 <= t < b <= 200 for l, t, r, b in boxes)
    # Reduced-scale JPEG decoding (draft) matches a full decode closely.
    big = jpeg(8, size=(800, 640), quality=95)
    full = np.asarray(images.open_image(big).convert("RGB").resize((32, 32), box=(0, 0, 800, 640)))
    fast = images.render(big, 32, "resize")
    assert np.abs(full.astype(int) - fast).mean() < 6   # of 255
    # The hash survives recompression, and differs for different images.
    assert bin(images.dhash(big) ^ images.dhash(jpeg(8, size=(800, 640), quality=60))).count("1") <= 4
    assert bin(images.dhash(big) ^ images.dhash(jpeg(9, size=(800, 640)))).count("1") > 10


def _mixture_cfg(data_dir, pattern, **kw):
    cfg = _cfg(data_dir, pattern, **kw)
    cfg.data.sources.web.weight = 1.0
    cfg.data.sources.digits = config_lib.source(kind="builtin", path="digits", weight=3.0)
    return cfg


def test_mixture_proportions(shards, data_dir):
    root, a, _ = shards
    cfg = _mixture_cfg(data_dir, a)
    it = iter(pipeline.train_dataset(cfg, ByteTokenizer())[0])
    kinds = collections.Counter("cat" if c.startswith("cat") else "digit"
                                for _ in range(25) for c in _captions(next(it)))
    assert abs(kinds["cat"] / 400 - 0.25) < 0.02, kinds


def test_mixture_with_workers_resumes_exactly_through_a_checkpoint(shards, data_dir, tmp_path):
    flags.FLAGS.mark_as_parsed()   # grain workers read absl flags
    root, _, _ = shards
    cfg = _mixture_cfg(data_dir, str(root / "web-*.array_record"),
                       **{"data.num_workers": 2, "data.flip": True, "data.crop": "random_resized"})
    it = iter(pipeline.train_dataset(cfg, ByteTokenizer())[0])
    for _ in range(3):
        next(it)
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(3, {"x": np.zeros(2)}, it)
    ckpt.close()
    want = [next(it) for _ in range(3)]
    fresh = iter(pipeline.train_dataset(cfg, ByteTokenizer())[0])
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.restore(3, {"x": np.zeros(2)}, fresh)
    ckpt.close()
    for w in want:
        got = next(fresh)
        assert got.keys() == w.keys()
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    del it, fresh


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_sees_every_example_once(shards, data_dir, processes):
    root, _, _ = shards
    src = config_lib.source(path=str(root / "web-*.array_record"))
    seen = collections.Counter()
    valid_rows = 0
    for p in range(processes):
        it, n = pipeline.eval_batches(src, None, images.View(16, "squash"), 20, process_index=p, process_count=processes)
        for b in it:
            assert b["image"].shape[0] == 20 // processes
            seen.update(b["index"].tolist())
            valid_rows += int(b["valid"].sum())
    assert n == 54 and sorted(seen) == list(range(60)) and set(seen.values()) == {1}
    # The three bad records are marked invalid, not dropped; the two images without a caption
    # are valid here (classification needs none; retrieval leaves them out).
    assert valid_rows == 50


def test_tfds_array_record_source(tmp_path, data_dir):
    import tensorflow_datasets as tfds

    class Tiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(40, 48, 3)),
                "caption": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(20):
                yield i, {"image": jpeg(i), "caption": f"tfds item {i}"}

    builder = Tiny(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    cfg = tiny_config(data_dir, **{"data.crop_padding": 0})
    cfg.data.sources.tiny = config_lib.source(kind="tfds", path=builder.data_dir,
                                              caption_key="caption")
    cfg.batch_size = 20
    it, n = pipeline.train_dataset(cfg, ByteTokenizer())
    b = next(iter(it))
    assert n == 20 and b["image"].shape == (20, 16, 16, 3)
    assert sorted(int(c.split()[-1]) for c in _captions(b)) == list(range(20))
    cfg.data.sources.tiny.split = "test"
    with pytest.raises(ValueError, match="no split 'test'"):
        pipeline.train_dataset(cfg, ByteTokenizer())


def test_trainer_logs_skip_counts(shards, data_dir, tmp_path):
    import json

    from vlm_jax.train import trainer
    root, _, _ = shards
    cfg = _cfg(data_dir, str(root / "web-*.array_record"),
               **{"log_every_steps": 4, "eval.zeroshot": (), "eval.retrieval": ()})
    trainer.train(cfg, str(tmp_path))                    # the tiny run's 8 steps (its programs)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [4, 8]
    # 8 steps x 16 examples = 128 > 48: the stream passed every bad record at least once.
    totals = {k: sum(r[k] for r in train) for k in pipeline.SKIP_METRICS}
    assert totals["data/skipped_record"] >= 1 and totals["data/skipped_image"] >= 2
    assert totals["data/skipped_caption"] >= 2


def test_web_recipe_reads_shards(shards, data_dir):
    import importlib.util
    spec = importlib.util.spec_from_file_location("web", "configs/web.py")
    web = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(web)
    root, _, _ = shards
    cfg = web.get_config(str(root / "web-*.array_record"))
    config_lib.validate(cfg)
    cfg.batch_size, cfg.data.num_workers = 8, 0
    b = next(iter(pipeline.train_dataset(cfg, ByteTokenizer())[0]))
    assert b["image"].shape == (8, 224, 224, 3) and b["tokens"].shape == (8, 64)
    with pytest.raises(ValueError, match="needs the shards"):
        web.get_config(None)
