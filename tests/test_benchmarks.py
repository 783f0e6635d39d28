"""The benchmarks run and print their documented JSON; the loss-memory one shows the ring's
point: per-device memory that does not grow with the number of devices."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest


def test_loss_memory_benchmark_json_and_scaling():
    r = subprocess.run([sys.executable, "benchmarks/loss_memory.py", "--devices", "4,16",
                        "--batch", "256", "--dim", "128", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert {tuple(sorted(x)) for x in rows} == {
        ("dim", "impl", "loss", "n_devices", "per_device_batch", "temp_bytes")}
    mem = {(x["loss"], x["impl"], x["n_devices"]): x["temp_bytes"] for x in rows}
    for loss in ("softmax", "sigmoid"):
        assert abs(mem[loss, "ring", 16] / mem[loss, "ring", 4] - 1) < 0.10
        assert mem[loss, "gather", 16] > 3 * mem[loss, "gather", 4]


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _benchmark(name):
    """benchmarks/NAME.py as a module: tests call its main(argv) in this process, where the
    suite's imports are done."""
    path = os.path.join(BENCHMARKS, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pod_benchmark_rows_split_the_batch_into_micro_batches():
    """The pod grid's runs (compiling them takes minutes: benchmarks/pod.py is run by hand):
    the published setup at the row's batch and negatives, in micro-batches of at most
    micro_rows rows per chip that split every shard."""
    import argparse
    pod = _benchmark("pod")
    args = argparse.Namespace(remat="sublayers", fsdp=16, image_size=224, micro_rows=512)
    c = pod.config("siglip-b16-256", "ring", 1 << 20, 256, args)
    assert c.batch_size == 1 << 20 and c.contrastive.impl == "ring" and c.microbatches == 8
    assert c.model.remat == "sublayers" and c.data.image_size == 224
    assert (c.mesh.data, c.mesh.fsdp) == (-1, 16)
    args.fsdp = -1               # --fsdp alone: over every chip
    assert (pod.config("siglip-b16-256", "ring", 1 << 20, 256, args).mesh.fsdp) == -1
    assert pod.config("clip-l14-224", "gather", 32768, 256, args).microbatches == 1
    args.micro_rows = 4          # 10 rows per chip: not 3 micro-batches, nor 4, but 5
    assert pod.config("clip-l14-224", "gather", 20, 2, args).microbatches == 5


def test_input_pipeline_benchmark_json(capsys):
    # Grain without worker processes (tests/test_sources.py starts workers).
    _benchmark("input_pipeline").main(["--images", "64", "--seconds", "0.3", "--batch", "8",
                                       "--workers", "0", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"pipeline_img_s", "raw_decode_img_s", "ratio"}
    assert out["pipeline_img_s"] > 0 and out["raw_decode_img_s"] > 0
    assert abs(out["ratio"] - out["pipeline_img_s"] / out["raw_decode_img_s"]) < 0.01


def test_step_benchmark_json_reports_throughput_and_mfu(capsys):
    # Scanned and rematerialised: its FLOPs come from the plain step (train/flops.py). One of
    # this process's devices.
    _benchmark("step").main(["--devices", "1", "--losses", "sigmoid", "--batch", "16", "--steps",
                             "1", "--warmup", "1", "--probe", "256", "--scan", "--remat",
                             "nothing_saveable", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["size"] == "tiny" and out["batch"] == 16 and out["microbatches"] == 1
    assert out["devices"] == 1 and out["scan"] is True and out["remat"] == "nothing_saveable"
    assert out["tflop_per_step"] > 0 and out["peak_tflop_s"] > 0 and out["step_s"] > 0
    assert abs(out["mfu"] - out["achieved_tflop_s"] / out["peak_tflop_s"]) < 1e-6
    assert abs(out["examples_per_s"] - 16 / out["step_s"]) < 1e-3 * out["examples_per_s"]
    with pytest.raises(SystemExit, match="--devices 9: only 8 available"):
        _benchmark("step").main(["--devices", "9"])


def test_shapes_benchmark_names_how_a_ranked_text_differs_from_the_image(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)     # its `from recipes import ...`
    relation = _benchmark("shapes").relation
    truth = (("red", "circle"), ("blue", "square"))
    cases = {"right": truth, "order": truth[::-1],
             "binding": (("blue", "circle"), ("red", "square")),
             "colour": (("green", "circle"), ("blue", "square")),
             "kind": (("red", "circle"), ("blue", "circle")),
             "object": (("green", "triangle"), ("blue", "square")),
             "count": truth[:1], "other": (("green", "triangle"), ("red", "square"))}
    for want, scene in cases.items():
        assert relation(truth, [scene]) == want, want
    # A text shared by several scenes counts as its closest one.
    assert relation(truth, [cases["other"], cases["kind"], cases["order"]]) == "order"


def test_shapes_benchmark_tables_have_a_row_per_recipe_and_eval_set(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    m = {"eval/shapes/i2t_r1": 0.25, "eval/shapes_seen/i2t_r1": 0.64,
         "eval/shapes_seen/itm_i2t_r1": 0.66, "eval/shapes_seen/itm_i2t_r1_p": 0.5}
    for kind in ("", "_heldout"):   # the seen-pair scenes have no held-out pair: no figure
        for k, v in {"": (0.75, float("nan"))[bool(kind)], "_lo": 0.7, "_hi": 0.8}.items():
            m[f"eval/shapes_seen/compositional_swap_itc{kind}{k}"] = v
    rows = [line for line in _benchmark("shapes").tables({"albef": (m, 12.0)}).splitlines()
            if line.startswith("| albef")]
    assert rows[0].startswith("| albef | 0.250 | - |")
    assert rows[1].startswith("| albef, seen pairs | 0.640 | - | 0.660 (p=0.5) |")
    swap = [r for r in rows if r.startswith("| albef, seen pairs | swap |")]
    assert swap[0].split(" | ")[3:5] == ["0.750 [0.70, 0.80]", "-"]
    assert swap[0].split(" | ")[7] == "-"                               # itc held out: nan


def test_shapes_benchmark_tells_training_scenes_and_unseen_pairs_apart(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    from vlm_jax.evals import compositional
    objects = [[["red", "circle"], ["blue", "triangle"]], [["green", "square"]]]
    rows = [r for r in compositional.pairs(objects) if r["kind"] in ("swap", "count")]
    known, unseen = _benchmark("shapes").novelty(rows, objects, {(("green", "square"),)})
    assert [(r["index"], r["kind"]) for r in rows] == [(0, "swap"), (0, "count"), (1, "count")]
    # The swap reads "a blue circle left of a red triangle": red triangles are held out.
    assert known.tolist() == [False, False, True] and unseen.tolist() == [True, False, False]


def test_benchmark_overrides_with_spaces_go_to_launch_train(monkeypatch):
    import argparse
    monkeypatch.syspath_prepend(BENCHMARKS)
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="*")
    p.add_argument("--root")
    schedule = "--config.itm.text_negatives_schedule=((20, 0.), (60, 1.))"   # argparse: positional
    monkeypatch.setattr(sys, "argv", ["shapes.py", "--root", "r", "albef", "--config.a=1", schedule])
    args, extra = _benchmark("recipes").parse_with_overrides(p, "variants")
    assert args.variants == ["albef"] and args.root == "r"
    assert extra == ["--config.a=1", schedule]


def test_generate_benchmark_decodes_the_same_tokens_as_transformers():
    out = _benchmark("generate").main(["--width", "64", "--depth", "1", "--vocab", "128",
                                       "--batch", "2", "--prompt", "4", "--new", "4",
                                       "--repeats", "1", "--json"])
    assert out["same_tokens"] and out["ours_tok_s"] > 0 and out["transformers_tok_s"] > 0
