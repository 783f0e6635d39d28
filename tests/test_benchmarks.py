"""The loss-memory benchmark runs, prints its documented JSON, and shows the ring's point:
per-device memory that does not grow with the number of devices."""
import importlib.util
import json
import os
import subprocess
import sys

from helpers import process_env


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


def test_input_pipeline_benchmark_json(capsys):
    # Its main() in this process, Grain without worker processes (tests/test_sources.py starts
    # workers): the script's imports are the suite's.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "input_pipeline.py")
    spec = importlib.util.spec_from_file_location("input_pipeline_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--images", "64", "--seconds", "0.3", "--batch", "8", "--workers", "0", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"pipeline_img_s", "raw_decode_img_s", "ratio"}
    assert out["pipeline_img_s"] > 0 and out["raw_decode_img_s"] > 0
    assert abs(out["ratio"] - out["pipeline_img_s"] / out["raw_decode_img_s"]) < 0.01


def test_step_benchmark_json_reports_throughput_and_mfu():
    # Scanned and rematerialised: its FLOPs come from the plain step (train/flops.py).
    r = subprocess.run([sys.executable, "benchmarks/step.py", "--losses", "sigmoid", "--batch",
                        "16", "--steps", "1", "--warmup", "1", "--probe", "256", "--scan",
                        "--remat", "nothing_saveable", "--json"],
                       capture_output=True, text=True, timeout=300, env=process_env(1))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["size"] == "tiny" and out["batch"] == 16 and out["microbatches"] == 1
    assert out["scan"] is True and out["remat"] == "nothing_saveable"
    assert out["tflop_per_step"] > 0 and out["peak_tflop_s"] > 0 and out["step_s"] > 0
    assert abs(out["mfu"] - out["achieved_tflop_s"] / out["peak_tflop_s"]) < 1e-6
    assert abs(out["examples_per_s"] - 16 / out["step_s"]) < 1e-3 * out["examples_per_s"]
