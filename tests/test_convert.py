"""The converter on real WebDataset tars and image folders, some inputs deliberately broken."""
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from datagen import caption_json, jpeg, truncated, webdataset_tar
from PIL import Image

from vlm_jax import config as config_lib
from vlm_jax.data import convert, pipeline


def _png(seed):
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed))).save(buf, format="PNG")
    return buf.getvalue()


def _webp(seed):
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed))).save(buf, format="WEBP")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    a = {}
    for i in range(10):
        a[f"{i:05d}.jpg"] = jpeg(i)
        a[f"{i:05d}.txt"] = f"a photo number {i}".encode()
    a.update({"00010.jpg": truncated(jpeg(10)), "00010.txt": b"truncated",      # corrupt_image
              "00011.jpg": b"definitely not a jpeg", "00011.txt": b"garbage",  # corrupt_image
              "00012.jpg": jpeg(12),                                           # missing_caption
              "00013.jpg": jpeg(13), "00013.txt": b"  \n",                     # empty_caption
              "00014.txt": b"a caption without its image",                     # missing_image
              "00015.png": _png(15), "00015.json": caption_json("a png with json caption"),
              "00016.webp": _webp(16), "00016.txt": b"a webp"})
    webdataset_tar(str(root / "00000.tar"), a)
    webdataset_tar(str(root / "00001.tar"),
                   {f"{i:05d}.{e}": (jpeg(i) if e == "jpg" else f"second shard {i}".encode())
                    for i in range(100, 108) for e in ("jpg", "txt")})
    whole = webdataset_tar(str(root / "whole.tar"),
                           {f"{i:05d}.{e}": (jpeg(i) if e == "jpg" else f"cut {i}".encode())
                            for i in range(200, 212) for e in ("jpg", "txt")})
    data = open(whole, "rb").read()
    (root / "00002.tar").write_bytes(data[: len(data) // 2])    # a download cut off mid-way
    os.remove(whole)
    return root


def _records(out):
    src = config_lib.source(path=os.path.join(out, "*.array_record"))
    caps, _ = pipeline.read_texts(src, None)
    return sorted(c for cs in caps for c in cs)


def test_webdataset_conversion_counts_and_reasons(tars, tmp_path):
    out = str(tmp_path / "out")
    jobs = convert.webdataset_jobs(sorted(str(p) for p in tars.glob("*.tar")))
    s = convert.convert(jobs, out, workers=2, progress=False)
    cut = s["written"] - 12 - 8            # what survived of the truncated tar
    assert 0 < cut < 12
    assert s["skipped"] == {"corrupt_image": 2, "missing_caption": 1, "empty_caption": 1,
                            "missing_image": 1, "unreadable_input": 1, "bad_region": 0}
    assert s["shards"] == 3 and s["resumed"] == 0
    assert any("00011" in e for e in s["examples"])
    caps = _records(out)
    assert len(caps) == s["written"]
    assert "a png with json caption" in caps and "a webp" in caps and "second shard 107" in caps
    assert json.load(open(os.path.join(out, "summary.json")))["written"] == s["written"]
    # The shards train: every record decodes through the train pipeline.
    from conftest import tiny_config
    from vlm_jax.data.tokenizer import ByteTokenizer
    cfg = tiny_config("", **{"data.crop": "random_resized", "data.crop_padding": 0})
    cfg.data.sources.web = config_lib.source(path=os.path.join(out, "*.array_record"))
    cfg.batch_size = s["written"]
    batch = next(iter(pipeline.train_dataset(cfg, ByteTokenizer())[0]))
    assert sum(int(batch[k]) for k in pipeline.SKIP_KEYS) == 0


def test_web_recipe_evaluates_on_its_held_out_share(tars, tmp_path):
    """configs/web.py, 3 steps at a tiny size on converted WebDataset shards: its last records
    are kept out of training (written to holdout.json) and are its only evaluation."""
    from configs import web
    from helpers import tiny_config, write_suite
    from vlm_jax.train import trainer
    out = str(tmp_path / "shards")
    written = convert.convert(convert.webdataset_jobs(sorted(str(p) for p in tars.glob("*.tar"))),
                              out, workers=1, progress=False)["written"]
    cfg = tiny_config("", web.get_config(os.path.join(out, "*.array_record")), **{
        "total_epochs": None, "total_steps": 3, "log_every_steps": 3,
        "checkpoint_every_steps": 3, "batch_size": 8, "optim.warmup_percent": None,
        "data.num_workers": 0, "model.dtype": "float32", "data.sources.web.holdout": 0.4,
        "data.sources.web.holdout_max": 9})
    # A suite named by eval.suite adds its sets that can be read (an image folder).
    for k, name in enumerate(("cat", "dog")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "photos" / name / f"{i}.jpg").write_bytes(jpeg(300 + 3 * k + i))
    cfg.eval.suite = write_suite(tmp_path / "suite.py", {
        "photos": dict(kind="folder", path=str(tmp_path / "photos")),
        "absent": dict(kind="folder", path=str(tmp_path / "nowhere"))},
        zeroshot=("photos", "absent"))
    last = trainer.train(cfg, str(tmp_path / "run"))
    assert {k for k in last if k.startswith("eval/")} == {
        f"eval/web_holdout/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {
        "eval/web_holdout/r_mean"} | {f"eval/photos/zeroshot_{m}" for m in (
            "top1", "top5", "mean_per_class_recall")}, sorted(last)
    split = json.load(open(tmp_path / "run" / "holdout.json"))["web"]
    assert split == {"path": cfg.data.sources.web.path, "records": written, "holdout": 0.4,
                     "holdout_max": 9, "train": [0, written - 9], "held_out": [written - 9, written]}
    # The two sides: training reads the first records, the eval set the last 9, none in both.
    from vlm_jax.evals import datasets
    train, _ = pipeline.parsed(cfg.data.sources.web, None)
    held, _ = pipeline.parsed(datasets.spec(cfg, "web_holdout"), None)
    captions = lambda ds: {c for i in range(len(ds)) for c in ds[i].get("captions", ())}
    assert (len(train), len(held)) == (written - 9, 9)
    assert not captions(train) & captions(held) and captions(train) | captions(held) == set(
        _records(out))


def test_folder_with_caption_tables(tmp_path):
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    rows = []
    for i in range(7):
        (images / "sub" / f"{i}.jpg").write_bytes(jpeg(i) if i != 3 else truncated(jpeg(3)))
        rows.append({"image": f"sub/{i}.jpg", "caption": f"picture {i}"})
    rows.append({"image": "sub/0.jpg", "caption": "picture 0 again"})    # a second caption
    rows.append({"image": "sub/missing.jpg", "caption": "no file"})
    rows.append({"image": "sub/5.jpg", "caption": ""})
    tables = {}
    tables["csv"] = tmp_path / "captions.csv"
    tables["csv"].write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    tables["jsonl"] = tmp_path / "captions.jsonl"
    tables["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq
    tables["parquet"] = tmp_path / "captions.parquet"
    pq.write_table(pa.Table.from_pylist(rows), tables["parquet"])
    for kind, table in tables.items():
        out = str(tmp_path / f"out_{kind}")
        s = convert.convert(convert.folder_jobs(str(images), str(table), shard_size=3), out,
                            progress=False)
        assert s["written"] == 6 and s["shards"] == 3, kind
        assert s["skipped"]["corrupt_image"] == 1 and s["skipped"]["missing_image"] == 1
        caps = _records(out)
        assert "picture 0" in caps and "picture 0 again" in caps and "picture 5" in caps
    with pytest.raises(KeyError, match="no column 'path'"):
        convert.folder_jobs(str(images), str(tables["csv"]), image_column="path")


def test_region_column_is_validated_and_follows_a_shrunk_image(tmp_path):
    """Boxes with descriptions from a table column (a list in JSONL and parquet, JSON text in
    CSV), joined over an image's rows; a box outside its image skips the image, named; with
    --max_size the boxes scale with the image."""
    import csv

    import msgpack
    from array_record.python.array_record_module import ArrayRecordReader
    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for i in range(3):                                           # 48 x 40 JPEGs
        (images / f"{i}.jpg").write_bytes(jpeg(i))
        rows.append({"image": f"{i}.jpg", "caption": f"picture {i}",
                     "regions": [{"box": [2.0, 4.0, 20.0 + i, 30.0], "caption": f"thing {i}"}]})
    rows.append({"image": "0.jpg", "caption": "again",
                 "regions": [{"box": [0.0, 0.0, 48.0, 40.0], "caption": "all of it"}]})
    rows[2]["regions"].append({"box": [10.0, 10.0, 60.0, 20.0], "caption": "past the edge"})
    tables = {"jsonl": tmp_path / "t.jsonl", "parquet": tmp_path / "t.parquet",
              "csv": tmp_path / "t.csv"}
    tables["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), tables["parquet"])
    with open(tables["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "caption", "regions"])
        w.writeheader()
        w.writerows({**r, "regions": json.dumps(r["regions"])} for r in rows)
    for kind, table in tables.items():
        out = str(tmp_path / f"out_{kind}")
        s = convert.convert(convert.folder_jobs(str(images), str(table),
                                                region_column="regions"), out, max_size=24,
                            progress=False)
        assert s["written"] == 2 and s["skipped"]["bad_region"] == 1, kind
        assert any("2.jpg: region #1: box [10.0, 10.0, 60.0, 20.0]" in e for e in s["examples"])
        reader = ArrayRecordReader(os.path.join(out, "part-00000.array_record"))
        recs = [msgpack.unpackb(r) for r in reader.read_all()]
        reader.close()
        got = {r["key"].split("/")[-1]: r["regions"] for r in recs}
        assert got["0.jpg"] == [{"box": [1.0, 2.0, 10.0, 15.0], "caption": "thing 0"},
                                {"box": [0.0, 0.0, 24.0, 20.0], "caption": "all of it"}], kind
        assert got["1.jpg"][0]["box"] == [1.0, 2.0, 10.5, 15.0]
    with pytest.raises(KeyError, match="no column 'boxes'"):
        convert.folder_jobs(str(images), str(tables["csv"]), region_column="boxes")


def test_interrupted_conversion_resumes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for t in range(8):
        webdataset_tar(str(src / f"{t:05d}.tar"),
                       {f"{i:05d}.{e}": (jpeg(i, size=(480, 360)) if e == "jpg" else f"s{t} {i}".encode())
                        for i in range(40) for e in ("jpg", "txt")})
    out = tmp_path / "out"
    args = [sys.executable, "-m", "launch.convert", "--input", str(src / "*.tar"),
            "--output", str(out), "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*.stats.json")):
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    finished = len(list(out.glob("*.stats.json")))
    assert 1 <= finished < 8, "the conversion was not caught mid-way"
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.load(open(out / "summary.json"))
    assert s["resumed"] == finished and s["written"] == 8 * 40
    assert not list(out.glob("*.tmp"))
    assert _records(str(out)) == sorted(f"s{t} {i}" for t in range(8) for i in range(40))
    assert "320 records in 8 shards" in r.stdout


def test_every_command_ends_bad_input_with_one_line(tmp_path):
    """A missing file, recipe or key: one line naming it, exit status 1, no traceback, nothing
    written (the commands run side by side)."""
    nowhere = str(tmp_path / "nowhere")
    cases = {
        ("launch.convert", "--input", f"{nowhere}/*.tar", "--output", str(tmp_path / "o")):
            f"launch.convert: no file matches '{nowhere}/*.tar'",
        ("launch.train", "--config", f"{nowhere}.py", "--workdir", str(tmp_path / "w")):
            f"launch.train: --config: [Errno 2] No such file or directory: '{nowhere}.py'",
        ("launch.train", "--config", "configs/quickstart.py", "--workdir", str(tmp_path / "w"),
         "--config.model.image.widht=3"):
            "launch.train: unknown config key 'widht' Did you mean \"width\" instead of \"widht\"?",
        ("launch.filter", "--input", f"{nowhere}/*.array_record", "--output", str(tmp_path / "o")):
            f"launch.filter: no files match '{nowhere}/*.array_record'",
        ("launch.sweep", "--sweep", f"{nowhere}.py", "--collect"):
            f"launch.sweep: sweep file '{nowhere}.py' not found",
    }
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = {args: subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for args in cases}
    for args, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "Traceback" not in err, (args, err[-2000:])
        assert err.strip().splitlines()[-1] == cases[args], (args, err[-500:])
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "w")
