"""Zero-shot and retrieval metrics on embeddings whose answers are known."""
import json
import os

import numpy as np
import pytest
from conftest import make_mesh, tiny_config
from helpers import write_suite

from vlm_jax import evals
from vlm_jax.evals import retrieval, zeroshot


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


WORDS = {"zero": [1, 0, 0], "one": [0, 1, 0], "two": [0, 0, 1]}


def _embed_texts(texts):
    # The embedding of a caption is its number word's direction, plus a little per-template noise.
    return _unit([np.array(WORDS[t.split()[-1]]) + 0.01 * len(t) for t in texts])


def test_zeroshot_prompt_ensemble():
    classes = [{"word": w} for w in WORDS]
    emb = zeroshot.class_embeddings(_embed_texts, classes, ["{word}", "the digit {word}"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    images = _unit([[1, 0.1, 0], [0, 0, 1], [0, 1, 0], [0.9, 0, 1]])
    pred = retrieval.top_k(images, emb, 5)
    assert pred.shape == (4, 3)                         # k is at most the number of classes
    out = zeroshot.scores(pred, np.array([0, 2, 1, 0]), 3)
    assert out["zeroshot_top1"] == 0.75 and out["zeroshot_top5"] == 1.0
    # class 0: 1 of 2 right, classes 1 and 2: all right
    assert out["zeroshot_mean_per_class_recall"] == pytest.approx((0.5 + 1 + 1) / 3)


ANIMALS = {"cat": [1, 0, 0], "dog": [0, 1, 0], "bird": [0, 0, 1], "puppy": [0, 1, 0.3]}


def test_retrieval_recall():
    embed = lambda texts: _unit([ANIMALS[t] for t in texts])
    captions = [["cat"], ["dog", "puppy"], ["bird"], ["dog"]]
    images = _unit([[1, 0, 0], [0, 1, 0.25], [0, 0.2, 1], [0.1, 0.2, 1]])
    # Nearest texts: img0 cat (hit), img1 puppy (hit), img2 bird (hit), img3 bird, puppy, dog:
    # its caption 'dog' is only third. Every text's nearest image is one of its own.
    r = retrieval.recall(images, captions, embed, ks=(1, 2, 3))
    assert r["i2t_r1"] == pytest.approx(0.75) and r["i2t_r2"] == pytest.approx(0.75)
    assert r["i2t_r3"] == 1.0
    assert r["t2i_r1"] == 1.0


def _numpy_recall(images, captions, text_emb, texts, ks):
    """The plain host computation: the whole similarity matrix, stable argsort."""
    positive = np.zeros((len(images), len(texts)), bool)
    for i, caps in enumerate(captions):
        positive[i, [texts.index(c) for c in caps]] = True
    sim = images @ text_emb.T
    out = {}
    for name, s, pos in (("i2t", sim, positive), ("t2i", sim.T, positive.T)):
        hits = np.take_along_axis(pos, np.argsort(-s, axis=1, kind="stable"), axis=1)
        out.update({f"{name}_r{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks})
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out


@pytest.mark.parametrize("n_devices", [1, 8])
def test_sharded_top_k_equals_a_full_sort(n_devices):
    rng = np.random.default_rng(0)
    queries, keys = rng.normal(size=(37, 8)), _unit(rng.normal(size=(53, 8)))  # 53: padded shards
    keys[40] = keys[3]                                # a tie: the lower index must come first
    queries[5] = keys[3]
    want = np.argsort(-(queries.astype(np.float32) @ keys.astype(np.float32).T), axis=1,
                      kind="stable")[:, :10]
    mesh = make_mesh(n_devices)
    got = retrieval.top_k(queries, keys, 10, mesh, ("data",), chunk=16)   # 3 query chunks
    np.testing.assert_array_equal(got, want)
    assert list(got[5, :2]) == [3, 40]
    assert retrieval.top_k(queries[:2], keys[:4], 10, mesh, ("data",)).shape == (2, 4)


def test_sharded_recall_on_1_and_8_devices_equals_numpy():
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    table = dict(zip(words, _unit(rng.normal(size=(40, 16)))))
    captions = [list(rng.choice(words, size=rng.integers(1, 4), replace=False)) for _ in range(90)]
    images = _unit(np.stack([table[c[0]] for c in captions]) + 0.8 * rng.normal(size=(90, 16)))
    embed = lambda texts: np.stack([table[t] for t in texts])
    texts = sorted({c for caps in captions for c in caps})
    want = _numpy_recall(images, captions, embed(texts), texts, (1, 5, 10))
    assert 0.1 < want["i2t_r1"] < 0.9               # neither trivial nor hopeless
    for n in (1, 8):
        got = retrieval.recall(images, captions, embed, mesh=make_mesh(n), axes=("data",))
        assert got == pytest.approx(want), n


def test_itm_reranking_reorders_each_querys_top_k():
    embed = lambda texts: _unit([ANIMALS[t] for t in texts])
    captions = [["cat"], ["dog", "puppy"], ["bird"], ["dog"]]
    images = _unit([[1, 0, 0], [0, 1, 0.25], [0, 0.2, 1], [0.1, 0.2, 1]])
    truth = np.zeros((4, 4), bool)                       # [images, sorted texts]
    texts = sorted(ANIMALS)                              # bird, cat, dog, puppy
    for i, caps in enumerate(captions):
        truth[i, [texts.index(c) for c in caps]] = True
    calls = []

    def oracle(txts, img_idx, txt_idx):                  # an ITM head that knows the answer
        assert txts == texts
        calls.append(len(img_idx))
        return truth[img_idx, txt_idx].astype(np.float32)

    r = retrieval.recall(images, captions, embed, ks=(1, 2), itm=oracle, rerank_k=3)
    # img3's caption was third by similarity: inside the top 3, so the oracle lifts it to first.
    assert r["i2t_r1"] == pytest.approx(0.75) and r["itm_i2t_r1"] == 1.0
    assert r["itm_t2i_r1"] == 1.0
    assert calls == [4 * 3, 4 * 3]                       # k candidates per query, each direction
    # One image gained, none lost: McNemar's p of one discordant query is 1; t2i likewise.
    assert r["itm_i2t_r1_p"] == 1.0 and r["itm_t2i_r1_p"] == 1.0
    # Outside the top k nothing moves: k = 1 keeps the similarity ranking.
    r1 = retrieval.recall(images, captions, embed, ks=(1, 2), itm=oracle, rerank_k=1)
    assert all(r1[f"itm_{k}"] == r1[k] for k in ("i2t_r1", "i2t_r2", "t2i_r1", "t2i_r2"))


def test_blip_reranking_adds_the_similarity_to_the_itm_score_and_itm_itc_its_logit():
    rng = np.random.default_rng(0)
    texts = _unit(rng.normal(size=(30, 8)))
    images = _unit(texts + rng.normal(scale=0.5, size=(30, 8)))  # near their own caption
    words = [f"t{j:02d}" for j in range(30)]                     # sorted: text j is words[j]
    captions = [[w] for w in words]
    itm_scores = rng.normal(scale=0.3, size=(30, 30)).astype(np.float32)  # [image, text]
    itm = lambda txts, img_idx, txt_idx: itm_scores[img_idx, txt_idx]
    r = retrieval.recall(images, captions, lambda t: texts[[words.index(w) for w in t]],
                         ks=(1,), itm=itm, rerank_k=5, scale=10.0)
    sim = images @ texts.T
    top5 = np.argsort(-sim, axis=1)[:, :5]                       # i2t: each image's 5 nearest
    pick = lambda s: top5[np.arange(30), np.argmax(np.take_along_axis(s, top5, 1), axis=1)]
    right = np.arange(30)
    assert r["itm_i2t_r1"] == pytest.approx((pick(itm_scores) == right).mean())
    assert r["itm_sim_i2t_r1"] == pytest.approx((pick(itm_scores + sim) == right).mean())
    assert r["itm_itc_i2t_r1"] == pytest.approx((pick(itm_scores + 10 * sim) == right).mean())
    top5 = np.argsort(-sim.T, axis=1)[:, :5]                     # t2i: each text's 5 nearest
    assert r["itm_sim_t2i_r1"] == pytest.approx((pick(itm_scores.T + sim.T) == right).mean())
    assert r["itm_itc_t2i_r1"] == pytest.approx((pick(itm_scores.T + 10 * sim.T) == right).mean())
    # Each similarity term counts (ITM is noise here), the more the larger its scale.
    assert r["itm_itc_i2t_r1"] > r["itm_sim_i2t_r1"] > r["itm_i2t_r1"]


def test_evaluator_runs_sharded_with_padding(data_dir):
    from vlm_jax.setup import Setup
    cfg = tiny_config(data_dir, **{"eval.batch_size": 48})   # 360 = 7 x 48 + 24: a padded tail
    s = Setup(cfg, mesh=make_mesh(8))
    params = s.init_state().params
    ev = evals.Evaluators(s)
    out = ev.run(params)
    assert set(out) == {f"eval/{d}/{m}" for d in ("digits", "shapes") for m in (
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean")} | {
        f"eval/digits/zeroshot_{m}" for m in ("top1", "top5", "mean_per_class_recall")}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    # The eval pipeline's embeddings come back in source order, padding dropped: they equal
    # the same images embedded straight from memory, one at a time.
    from vlm_jax.data import pipeline
    a = ev.data.images(params, "digits")
    imgs = pipeline.load_split("digits", "test", data_dir, cfg.data.image_size)["image"]
    assert a.shape[0] == len(imgs) == 360
    b = np.concatenate([ev.data.embedder.images(params, imgs[i:i + 1]) for i in (0, 200, 359)])
    np.testing.assert_allclose(a[[0, 200, 359]], b, atol=1e-5)


def test_ridge_probe_predicts_like_sklearn():
    from sklearn.linear_model import RidgeClassifier

    from vlm_jax.evals import linear_probe as probe
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12))
    labels = rng.integers(0, 5, 300)
    x = centres[labels] + 1.5 * rng.normal(size=(300, 12))
    train, test = slice(0, 200), slice(200, 300)
    l2 = 0.05
    ours = probe.ridge_top1(x[train], labels[train], x[test], labels[test], l2)
    ref = RidgeClassifier(alpha=l2 * 200).fit(x[train], labels[train])
    assert ours == pytest.approx(float(np.mean(ref.predict(x[test]) == labels[test])))
    w, b = probe.ridge_fit(x[train], labels[train], 5, l2)
    np.testing.assert_array_equal(np.argmax(x[test] @ w + b, 1), ref.predict(x[test]))
    assert 0.4 < ours < 1.0


def test_shipped_class_names_and_templates_and_prompts():
    from vlm_jax.evals import datasets
    lines = lambda name, suffix: datasets.read_lines(name, (name,), "x", suffix)
    clip = lines("imagenet1k", "templates")
    assert len(clip) == len(set(clip)) == 80 and len(lines("cifar", "templates")) == 18
    assert all(t.count("{}") == 1 for t in clip + lines("cifar", "templates"))
    # CLIP's ImageNet names repeat two (missile and sunglasses name two classes each).
    assert [len(lines(n, "classes")) for n in ("imagenet1k", "cifar10", "cifar100")] == [
        1000, 10, 100]
    classes = [{"word": "seven", "digit": "7"}, {"word": "one", "digit": "1"}]
    assert zeroshot.prompts(classes, ["a photo of a {}.", "handwritten {digit}"]) == [
        "a photo of a seven.", "handwritten 7", "a photo of a one.", "handwritten 1"]
    assert zeroshot.prompts(classes, ["{}!"], names=["7", "1"]) == ["7!", "1!"]
    with pytest.raises(ValueError, match="1 class names for 2 classes"):
        zeroshot.prompts(classes, ["{}"], names=["x"])
    # CLIP_benchmark's form, '{c}', beside CLIP's; per-class prompts (CuPL) from a JSON dict.
    assert zeroshot.prompts(classes, ["a {c}.", "{} or {c}"]) == [
        "a seven.", "seven or seven", "a one.", "one or one"]
    with pytest.raises(ValueError, match="'a photo' holds no placeholder"):
        zeroshot.prompts(classes, ["a photo"])
    with pytest.raises(ValueError, match="names 'colour'"):
        zeroshot.prompts(classes, ["a {colour} photo"])
    cupl = {"seven": ("a 7", "seven!"), "one": ("a 1",)}
    assert zeroshot.class_prompts(classes, cupl) == [["a 7", "seven!"], ["a 1"]]
    with pytest.raises(ValueError, match="none for 1 classes .e.g. 'one'"):
        zeroshot.prompts(classes, {"seven": ["x"]})
    emb = zeroshot.class_embeddings(
        lambda ts: np.array([[len(t), 1.0] for t in ts]), classes, cupl)
    want = np.array([[4.5, 1], [3, 1]]) / np.linalg.norm([[4.5, 1], [3, 1]], axis=1)[:, None]
    np.testing.assert_allclose(emb, want, rtol=1e-6)


def test_templates_from_json_files(tmp_path):
    from vlm_jax import config as config_lib
    from vlm_jax.evals import datasets
    spec = lambda path: config_lib.eval_dataset(kind="folder", path="x", templates=str(path))
    (tmp_path / "list.json").write_text(json.dumps(["a photo of a {c}.", "{c}"]))
    (tmp_path / "cupl.json").write_text(json.dumps({"cat": ["a cat.", "fur"]}))
    (tmp_path / "bad.json").write_text(json.dumps({"cat": "a cat"}))
    assert datasets.templates(spec(tmp_path / "list.json"), "v", None) == (
        "a photo of a {c}.", "{c}")
    assert datasets.templates(spec(tmp_path / "cupl.json"), "v", None) == {
        "cat": ("a cat.", "fur")}
    with pytest.raises(ValueError, match="must hold a list of templates or a mapping"):
        datasets.templates(spec(tmp_path / "bad.json"), "v", None)
    with pytest.raises(FileNotFoundError, match="eval.datasets.v.templates"):
        datasets.templates(spec(tmp_path / "none.json"), "v", None)


def test_linear_probe_and_clip_zero_shot_match_an_independent_computation(data_dir):
    from sklearn.linear_model import RidgeClassifier

    from vlm_jax import config as config_lib
    from vlm_jax.data import builtin, pipeline
    from vlm_jax.evals import datasets
    from vlm_jax.setup import Setup
    cfg = tiny_config(data_dir, **{"eval.linear_probe": ("digits",), "eval.retrieval": (),
                                   "eval.probe_l2": 0.01})
    cfg.eval.datasets.digits = config_lib.eval_dataset(kind="builtin", path="digits",
                                                       templates="imagenet1k")
    s = Setup(cfg)                      # the trainer's mesh: its init and encoders are compiled
    params = s.init_state().params
    ev = evals.Evaluators(s)
    out = ev.run(params)
    assert set(out) == {"eval/digits/linear_probe_top1", "eval/digits/zeroshot_top1",
                        "eval/digits/zeroshot_top5", "eval/digits/zeroshot_mean_per_class_recall"}
    # The same numbers from the images held in memory, embedded directly, scored by sklearn and
    # by a plain numpy prompt ensemble.
    emb = ev.data.embedder
    feats, labels = {}, {}
    for split in ("train", "test"):
        data = pipeline.load_split("digits", split, data_dir, cfg.data.image_size)
        feats[split] = emb.images(params, data["image"], "img/pre_logits")
        labels[split] = data["label"]
    ref = RidgeClassifier(alpha=0.01 * len(labels["train"])).fit(feats["train"], labels["train"])
    want = float(np.mean(ref.predict(feats["test"]) == labels["test"]))
    assert out["eval/digits/linear_probe_top1"] == pytest.approx(want)
    words = [c["word"] for c in builtin.info("digits", data_dir)["classes"]]
    clip = datasets.read_lines("imagenet1k", ("imagenet1k",), "templates", "templates")
    text = emb.texts(params, [t.format(w) for w in words for t in clip])
    cls = text.reshape(10, 80, -1).mean(1)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    img = emb.images(params, pipeline.load_split("digits", "test", data_dir, 16)["image"])
    zs = float(np.mean(np.argmax(img @ cls.T, 1) == labels["test"]))
    assert out["eval/digits/zeroshot_top1"] == pytest.approx(zs)


def test_each_evaluator_keeps_its_own_cadence_and_prefix(data_dir, tmp_path):
    import json

    import os
    import shutil

    from vlm_jax import config as config_lib
    from vlm_jax.data import builtin
    from vlm_jax.train import evaluate, trainer
    # Trained on a copy of the digits' train shard, deleted before launch.eval runs.
    shard = str(tmp_path / "train.array_record")
    shutil.copy(os.path.join(builtin.dataset_dir("digits", data_dir), "train.array_record"), shard)
    cfg = tiny_config(data_dir, **{
        "log_every_steps": 4, "eval_every_steps": 4,       # the suite's tiny run: 8 steps
        "eval.zeroshot": ("digits",), "eval.zeroshot_prefix": "zs/{dataset}/",
        "eval.retrieval": ("shards",), "eval.retrieval_every_steps": 2,
        "eval.linear_probe": ("digits",), "eval.linear_probe_every_percent": 100.0,
        "eval.linear_probe_prefix": "probe/"})
    cfg.data.sources["digits"] = config_lib.source(path=shard)
    # An eval set that is not built in: the shapes test split's shards, read as ours.
    cfg.eval.datasets.shards = config_lib.eval_dataset(path=os.path.join(
        builtin.dataset_dir("shapes", data_dir), "test.array_record"), label_key="")
    trainer.train(cfg, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    steps = lambda key: sorted({r["step"] for r in rows if key in r})
    assert steps("eval/shards/i2t_r1") == [2, 4, 6, 8]      # its own cadence
    assert steps("zs/digits/zeroshot_top1") == [4, 8]       # eval_every
    assert steps("probe/linear_probe_top1") == [8]          # 100% of the run
    assert not any(k.startswith("eval/digits") for r in rows for k in r)
    # launch.eval runs the evaluators asked for, under the same names, without the training data.
    os.remove(shard)
    out = evaluate.evaluate_workdir(str(tmp_path), kinds=("zeroshot",))
    assert set(out) == {"step", "zs/digits/zeroshot_top1", "zs/digits/zeroshot_top5",
                        "zs/digits/zeroshot_mean_per_class_recall"} and out["step"] == 8
    logged = [r for r in rows if "zs/digits/zeroshot_top1" in r][-1]["zs/digits/zeroshot_top1"]
    assert out["zs/digits/zeroshot_top1"] == pytest.approx(logged)
    # A suite on the same workdir: what is present is evaluated, what is not is listed. Two sets
    # in CLIP_benchmark's webdataset layout score as the same images read another way do: the
    # digits as an image folder with `{}` templates, the shapes as the caption shards.
    sets = _clip_benchmark_sets(tmp_path, data_dir)
    suite = write_suite(tmp_path / "suite.py", {
        "absent": dict(kind="folder", path="/nowhere/val"),
        "wds_digits": dict(kind="wds", path=sets["wds_digits"]),
        "folder_digits": dict(kind="folder", path=sets["folder"], templates=sets["templates"]),
        "wds_shapes": dict(kind="wds", path=sets["wds_shapes"])},
        zeroshot=("digits", "absent", "wds_digits", "folder_digits"),
        retrieval=("wds_shapes", "shards"), logistic_probe=("digits",),
        itm_rerank=("digits",))     # a suite's evaluator without its head: left out
    report = evaluate.evaluate_suite(str(tmp_path), suite)
    assert report["step"] == 8 and set(report["results"]) == {
        "digits", "wds_digits", "folder_digits", "wds_shapes", "shards"}
    for a, b in (("wds_digits", "folder_digits"), ("wds_shapes", "shards")):
        assert report["results"][a] == pytest.approx(report["results"][b], abs=1e-9), (a, b)
    assert 0 < report["results"]["wds_digits"]["zeroshot_top1"] < 1
    got = report["results"]["digits"]
    assert set(got) == {"zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall",
                        "logistic_probe_top1", "logistic_probe_c"}
    assert got["zeroshot_top1"] == pytest.approx(logged)
    assert report["missing"] == {"absent": "FileNotFoundError: image folder '/nowhere/val' does "
                                           "not exist"}
    assert report["skipped"] == {"itm_rerank": "the model has no ITM head (its objective's "
                                               "weight is 0)"}
    where = tmp_path / "eval" / "suite"
    assert json.load(open(where / "results.json"))["results"] == report["results"]
    table = (where / "results.md").read_text()
    assert f"| digits | zeroshot_top1 | {logged:.4f} |" in table and "- absent: " in table
    assert "- itm_rerank: the model has no ITM head" in table
    pred = np.load(where / "predictions" / "digits.zeroshot.npz")
    assert len(pred["index"]) == 360 and pred["top5"].shape == (360, 5)
    assert np.mean(pred["top5"][:, 0] == pred["label"]) == pytest.approx(logged)
    # CLIP_benchmark's records, one per dataset and task, in its schema and file names.
    record = json.load(open(where / "clip_benchmark" / "wds_digits_step8_"
                            f"{tmp_path.name}_en_zeroshot_classification.json"))
    zs = report["results"]["wds_digits"]
    assert record == {"dataset": "wds_digits", "model": tmp_path.name, "pretrained": "step8",
                      "task": "zeroshot_classification", "language": "en", "metrics": {
                          "acc1": zs["zeroshot_top1"], "acc5": zs["zeroshot_top5"],
                          "mean_per_class_recall": zs["zeroshot_mean_per_class_recall"]}}
    record = json.load(open(where / "clip_benchmark" / "wds_shapes_step8_"
                            f"{tmp_path.name}_en_zeroshot_retrieval.json"))
    r = report["results"]["wds_shapes"]
    assert record["task"] == "zeroshot_retrieval" and record["metrics"] == {
        **{f"image_retrieval_recall@{k}": r[f"t2i_r{k}"] for k in (1, 5, 10)},
        **{f"text_retrieval_recall@{k}": r[f"i2t_r{k}"] for k in (1, 5, 10)}}
    # Retrieval's per-example ranks of the true matches give its recalls.
    ranks = np.load(where / "predictions" / "wds_shapes.retrieval.npz")
    assert len(ranks["i2t_rank"]) == 500 and len(ranks["t2i_rank"]) == len(ranks["texts"])
    for k in (1, 5):
        assert np.mean(ranks["i2t_rank"] <= k) == pytest.approx(r[f"i2t_r{k}"])
        assert np.mean(ranks["t2i_rank"] <= k) == pytest.approx(r[f"t2i_r{k}"])


def _clip_benchmark_sets(root, data_dir):
    """The digits and shapes test splits in CLIP_benchmark's webdataset layout (class names and
    `{c}` templates in its files, 3 and 2 shards), and the digits as an image folder."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from datagen import clip_benchmark_set

    from vlm_jax.data import builtin, records
    read = lambda name: [records.unpack(r, name) for r in ArrayRecordDataSource(
        os.path.join(builtin.dataset_dir(name, data_dir), "test.array_record"))]
    words = [c["word"] for c in builtin.info("digits", data_dir)["classes"]]
    digits = [{"image": ex["image"], "label": ex["label"]} for ex in read("digits")]
    wds = clip_benchmark_set(root / "wds_digits", digits, words,
                             ("a photo of the number {c}.", "the digit {c}"), shards=3)
    for i, ex in enumerate(digits):
        (root / "folder" / words[ex["label"]]).mkdir(parents=True, exist_ok=True)
        (root / "folder" / words[ex["label"]] / f"{i}.png").write_bytes(ex["image"])
    (root / "templates.txt").write_text("a photo of the number {}.\nthe digit {}\n")
    shapes = [{"image": ex["image"], "captions": ex["captions"]} for ex in read("shapes")]
    return {"wds_digits": wds, "folder": str(root / "folder"), "templates": str(root / "templates.txt"),
            "wds_shapes": clip_benchmark_set(root / "wds_shapes", shapes)}


def test_suites_load_and_validate():
    import glob

    from vlm_jax import config as config_lib
    from vlm_jax.evals import suite
    files = sorted(glob.glob("configs/evals/*.py"))
    assert len(files) >= 2
    for path in files:
        c = config_lib.defaults()
        suite.apply(c, suite.load(path))
        assert any(c.eval[k] for k in config_lib.EVALUATORS), path


def test_eval_config_errors():
    from vlm_jax import config as config_lib
    c = config_lib.defaults()
    c.eval.retrieval_prefix = "eval/{name}/"
    with pytest.raises(config_lib.ConfigError, match="eval.retrieval_prefix"):
        config_lib.validate(c)
    c.eval.retrieval_prefix = "retrieval/"      # two datasets, one name each metric
    with pytest.raises(config_lib.ConfigError, match="needs '{dataset}'"):
        config_lib.validate(c)
    c = config_lib.defaults()
    c.eval.zeroshot_every_steps, c.eval.zeroshot_every_epochs = 10, 1.0
    with pytest.raises(config_lib.ConfigError, match="zeroshot_every"):
        config_lib.validate(c)


def test_ticker_reports_progress_and_time_left(monkeypatch):
    from vlm_jax import progress
    clock = iter([0.0, 5.0, 12.0, 15.0, 30.0, 40.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    t = progress.Ticker("embedding digits test images", 400, "images", every_s=10)
    t.update(100)       # at 5 s: too soon for a line
    t.update(100)       # at 12 s: 200/400, 16.7/s, 12 s left
    t.update(100)       # at 15 s: 3 s after the last line
    t.update(100)       # at 30 s: done, the close line says so
    assert t.close() == 40.0
    assert t.lines == ["embedding digits test images: 200/400 images (50%), 16.7/s, ETA 0m12s",
                       "embedding digits test images: 400 images in 40.0s"]


def test_mlm_content_words_and_their_tokens():
    from vlm_jax.data.tokenizer import ByteTokenizer
    from vlm_jax.evals import mlm
    captions = [["a red circle", "one red circle"], ["a blue square"], ["a red square"],
                ["a green circle left of a red square"]]
    # 'a' is in every image's captions, 'red' in three of four, 'circle' and 'square' in two
    # (not fewer than half); the rest in one.
    assert mlm.content_words(captions) == {"one", "blue", "green", "left", "of"}
    tok = ByteTokenizer()
    got = mlm.content_mask(tok, ["a blue square.", "one, two"], 10, {"blue", "one"})
    # BOS first: 'blue' is bytes 2-5 of the text, ids 3-6; 'one,' loses its comma; the last
    # position (EOS when truncated) is never content.
    np.testing.assert_array_equal(np.flatnonzero(got[0]), [3, 4, 5, 6])
    np.testing.assert_array_equal(np.flatnonzero(got[1]), [1, 2, 3])
