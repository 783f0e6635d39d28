"""Eval sets of every kind (a TFDS dataset prepared in array_record, an image folder, caption
shards), built here, scored by every evaluator on 1 and 8 devices and checked against a plain
numpy / scikit-learn computation on the same embeddings."""
import os

import numpy as np
import pytest
from conftest import make_mesh, tiny_config
from datagen import jpeg, write_records
from test_evals import _numpy_recall

from vlm_jax import config as config_lib
from vlm_jax.data import images

TFDS_CLASSES = ["red thing", "green thing", "blue thing", "grey thing", "dot", "line", "star"]
TFDS_TEST = [0] * 6 + [1] * 4 + [2] * 3 + [3] * 2 + [4, 5, 6]      # unbalanced; 7 > top-5
FOLDER = {"ant": 7, "bee": 2, "cat": 4}                  # unbalanced; bee also holds a broken file
SIZES = [(48, 40), (40, 48), (32, 32), (60, 30)]         # the centre crop matters


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    import tensorflow_datasets as tfds
    root = tmp_path_factory.mktemp("evalsets")

    class TinyLabels(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "picture": tfds.features.Image(shape=(None, None, 3)),
                "kind": tfds.features.ClassLabel(names=[n.replace(" ", "_")
                                                        for n in TFDS_CLASSES])}))

        def _split_generators(self, dl_manager):
            train = [i % 7 for i in range(42)]
            return {"train": self._generate_examples(train, 0),
                    "test": self._generate_examples(TFDS_TEST, 100)}

        def _generate_examples(self, labels, seed):
            for i, label in enumerate(labels):
                yield i, {"picture": jpeg(seed + i, SIZES[i % 4]), "kind": label}

    builder = TinyLabels(data_dir=str(root / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    folder = root / "folder"
    seed = 200
    for name, n in FOLDER.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            (folder / name / f"{i:03d}.jpg").write_bytes(jpeg(seed, SIZES[seed % 4]))
            seed += 1
    (folder / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")   # unreadable
    (folder / "bee" / "notes.txt").write_text("not an image")
    (root / "folder_names.txt").write_text("an ant\na bee\na cat\n")
    (root / "templates.txt").write_text("a photo of {}.\n{}\n")
    # 12 images, 5 captions each; 'a picture' belongs to two of them.
    caps = [{"image": jpeg(300 + i, SIZES[i % 4]),
             "captions": [f"image {i}", f"item {i} here", f"number {i}", f"the {i}",
                          "a picture" if i in (3, 7) else f"pic {i}"]} for i in range(12)]
    shards = write_records(str(root / "caps-00000.array_record"), caps)
    return {"tfds": builder.data_dir, "folder": str(folder), "root": root, "caps": shards,
            "caps_examples": caps}


def _config(data_dir, sets, **overrides):
    cfg = tiny_config(data_dir, **{"eval.zeroshot": ("labels", "folder"),
                                   "eval.retrieval": ("caps",), "eval.linear_probe": ("labels",),
                                   "eval.logistic_probe": ("labels",), "eval.batch_size": 16,
                                   **overrides})
    d = cfg.eval.datasets
    d.labels = config_lib.eval_dataset(kind="tfds", path=sets["tfds"], image_key="picture",
                                       label_key="kind", caption_key="",
                                       templates=str(sets["root"] / "templates.txt"))
    d.folder = config_lib.eval_dataset(kind="folder", path=sets["folder"],
                                       class_names=str(sets["root"] / "folder_names.txt"),
                                       templates=str(sets["root"] / "templates.txt"))
    d.caps = config_lib.eval_dataset(path=sets["caps"], label_key="")
    config_lib.validate(cfg)
    return cfg


def _numpy_zeroshot(img, labels, text_emb, n_classes, n_templates):
    cls = text_emb.reshape(n_classes, n_templates, -1).mean(1)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    order = np.argsort(-(img @ cls.T), axis=1, kind="stable")
    recall = [np.mean(order[labels == c, 0] == c) for c in range(n_classes) if (labels == c).any()]
    return {"zeroshot_top1": np.mean(order[:, 0] == labels),
            "zeroshot_top5": np.mean((order[:, :5] == labels[:, None]).any(1)),
            "zeroshot_mean_per_class_recall": np.mean(recall)}


def _folder_files(folder):
    out = []
    for label, name in enumerate(sorted(FOLDER)):
        for f in sorted(os.listdir(os.path.join(folder, name))):
            if f.endswith(".jpg"):
                out.append((os.path.join(folder, name, f), label))
    return out


def test_every_metric_on_every_kind_of_set_matches_numpy_on_1_and_8_devices(data_dir, sets):
    import tensorflow_datasets as tfds
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    from vlm_jax import evals
    from vlm_jax.evals import logistic_probe
    from vlm_jax.setup import Setup
    cfg = _config(data_dir, sets)
    size = cfg.data.image_size
    render = lambda data: images.View(size).render(data)[0]
    results = {}
    for n in (1, 8):
        s = Setup(cfg, mesh=make_mesh(n))
        params = s.init_state().params
        ev = evals.Evaluators(s)
        results[n] = ev.run(params)
    emb = ev.data.embedder
    embed_texts = lambda t: emb.texts(params, t)
    want = {}
    # The TFDS set: its own class names (underscores read as spaces), a templates file.
    src = tfds.builder_from_directory(sets["tfds"])
    split = {k: src.as_data_source(k) for k in ("train", "test")}
    feats, labels = {}, {}
    for k, ds in split.items():
        exs = [ds[i] for i in range(len(ds))]
        pixels = np.stack([render(np.asarray(e["picture"])) for e in exs])
        labels[k] = np.array([int(e["kind"]) for e in exs])
        feats[k] = (emb.images(params, pixels), emb.images(params, pixels, "img/pre_logits"))
    prompts = [t.format(c) for c in TFDS_CLASSES for t in ("a photo of {}.", "{}")]
    want.update({f"eval/labels/{k}": v for k, v in _numpy_zeroshot(
        feats["test"][0], labels["test"], embed_texts(prompts), 7, 2).items()})
    ridge = RidgeClassifier(alpha=cfg.eval.probe_l2 * 42).fit(feats["train"][1], labels["train"])
    want["eval/labels/linear_probe_top1"] = np.mean(ridge.predict(feats["test"][1]) == labels["test"])
    # The logistic probe's C came from its validation split; refit on the whole train split
    # with that C, scikit-learn gives the same test accuracy.
    c = results[1]["eval/labels/logistic_probe_c"]
    assert any(np.isclose(np.log10(c), p) for p in np.arange(-6, 6.01, 0.5))
    ref = LogisticRegression(C=c, max_iter=1000).fit(feats["train"][1], labels["train"])
    want["eval/labels/logistic_probe_top1"] = np.mean(ref.predict(feats["test"][1]) == labels["test"])
    want["eval/labels/logistic_probe_c"] = c
    # The folder: the broken file is left out; names from the file.
    files = _folder_files(sets["folder"])
    good = [(f, y) for f, y in files if not f.endswith("broken.jpg")]
    assert len(good) == len(files) - 1 == sum(FOLDER.values())
    pixels = np.stack([render(open(f, "rb").read()) for f, _ in good])
    prompts = [t.format(c) for c in ("an ant", "a bee", "a cat") for t in ("a photo of {}.", "{}")]
    want.update({f"eval/folder/{k}": v for k, v in _numpy_zeroshot(
        emb.images(params, pixels), np.array([y for _, y in good]), embed_texts(prompts),
        3, 2).items()})
    # Caption shards: 5 captions per image, one caption shared by two images.
    caps = sets["caps_examples"]
    img = emb.images(params, np.stack([render(e["image"]) for e in caps]))
    captions = [e["captions"] for e in caps]
    texts = sorted({c for cs in captions for c in cs})
    want.update({f"eval/caps/{k}": v for k, v in _numpy_recall(
        img, captions, embed_texts(texts), texts, (1, 5, 10)).items()})
    assert len(texts) == 59
    assert 0 < want["eval/labels/zeroshot_top5"] < 1
    for n in (1, 8):
        assert set(results[n]) == set(want), n
        for k, v in want.items():
            assert results[n][k] == pytest.approx(float(v), abs=1e-6), (n, k)
    # Per-image zero-shot outputs: the folder's scored images are all but the broken one.
    out = ev.evaluators["zeroshot"].outputs["folder"]
    assert list(out["index"]) == [i for i, (f, _) in enumerate(files)
                                  if not f.endswith("broken.jpg")]


def test_logistic_probe_picks_c_on_validation():
    from vlm_jax.evals import logistic_probe
    rng = np.random.default_rng(0)
    centres = 3 * rng.normal(size=(3, 8))
    y = rng.integers(0, 3, 240)
    x = centres[y] + rng.normal(size=(240, 8))
    train, val = logistic_probe.held_out(x[:160], y[:160], 0.25)
    assert len(train[1]) == 120 and len(val[1]) == 40
    out = logistic_probe.probe(train, val, (x[160:], y[160:]))
    assert out["logistic_probe_top1"] > 0.9
    assert out["logistic_probe_c"] > 1e-4        # not the strongest penalties, which underfit


def test_bad_eval_sets_are_named(data_dir, sets, tmp_path):
    from vlm_jax import evals
    from vlm_jax.evals import datasets
    from vlm_jax.setup import Setup
    cfg = _config(data_dir, sets)
    s = cfg.eval.datasets
    (tmp_path / "two.txt").write_text("one\ntwo\n")
    s.folder.class_names = str(tmp_path / "two.txt")
    with pytest.raises(ValueError, match=r"class_names .*two.txt.* has 2 names but the dataset "
                                         r"has 3 classes"):
        datasets.classes(s.folder, "folder", None)
    s.folder.class_names = "nowhere.txt"
    with pytest.raises(FileNotFoundError, match="'nowhere.txt' is neither a shipped list"):
        datasets.classes(s.folder, "folder", None)
    assert "no split 'validation'" in datasets.missing(
        config_lib.eval_dataset(kind="tfds", path=sets["tfds"], split="validation"), ["validation"], None)
    assert "does not exist" in datasets.missing(
        config_lib.eval_dataset(kind="folder", path=str(tmp_path / "absent")), ["test"], None)
    assert "no files match" in datasets.missing(
        config_lib.eval_dataset(path=str(tmp_path / "none-*.array_record")), ["test"], None)
    cfg.eval.zeroshot = ("labels", "nameless")
    with pytest.raises(ValueError, match="eval set 'nameless' is neither in eval.datasets"):
        evals.Evaluators(Setup(cfg))
    with pytest.raises(config_lib.ConfigError, match="eval.templates' was removed: .*per eval set"):
        config_lib.validate(tiny_config(data_dir, **{"eval.templates": "clip"}))
    with pytest.raises(config_lib.ConfigError, match="eval.datasets.x.kind' is 'folders'"):
        c = tiny_config(data_dir)
        c.eval.datasets.x = config_lib.eval_dataset(kind="folders", path="p")
        config_lib.validate(c)
