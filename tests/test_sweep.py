"""Sweeps: point algebra, a local sweep collected into a table, emitted launch scripts."""
import csv
import io
import os
import subprocess
import sys

import pytest
import helpers
from helpers import process_env

from vlm_jax import sweeps

SWEEP = "configs/sweeps/quickstart.py"
# A smoke run of every point: the suite's tiny model, 2 steps, zero-shot digits only.
TINY = [f"{k}={v}" for k, v in {**helpers.TINY, "total_steps": 2, "log_every_steps": 1,
                                "checkpoint_every_steps": 2, "eval.retrieval": "()"}.items()]


def test_points_grid_zip_product_and_names():
    g = sweeps.grid(**{"optim.lr": [1, 2], "contrastive.name": ["a", "b"]})
    assert g == [{"optim.lr": 1, "contrastive.name": "a"}, {"optim.lr": 1, "contrastive.name": "b"},
                 {"optim.lr": 2, "contrastive.name": "a"}, {"optim.lr": 2, "contrastive.name": "b"}]
    z = sweeps.zipped(**{"seed": [0, 1], "optim.lr": [0.1, 0.2]})
    assert z == [{"seed": 0, "optim.lr": 0.1}, {"seed": 1, "optim.lr": 0.2}]
    assert len(sweeps.product(g, z)) == 8 and sweeps.product(g, z)[-1] == {
        "optim.lr": 0.2, "contrastive.name": "b", "seed": 1}
    with pytest.raises(ValueError, match="one length"):
        sweeps.zipped(a=[1, 2], b=[1])
    assert sweeps.point_name({"optim.lr": 0.001, "eval.zeroshot": ("digits",)}) == \
        "lr_0.001-zeroshot_digits"
    s = sweeps.Sweep("configs/quickstart.py", [{"optim.lr": 0.001, "contrastive.name": "sigmoid"}])
    assert sweeps.train_args(s, s.points[0], "W", {"total_steps": 2}) == [
        "--config", "configs/quickstart.py", "--workdir", "W", "--config.total_steps=2",
        "--config.optim.lr=0.001", "--config.contrastive.name=sigmoid"]


def test_bad_sweep_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        sweeps.load(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_sweep"):
        sweeps.load(str(bad))


def _sweep_cli(*args, sweep=SWEEP, env=None):
    return subprocess.run([sys.executable, "-m", "launch.sweep", "--sweep", sweep, *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_emitted_tpu_vm_and_slurm_scripts(tmp_path):
    root = str(tmp_path / "sw")
    for kind, name in (("tpu_vm", "launch_tpu_vm.sh"), ("slurm", "launch_slurm.sbatch")):
        r = _sweep_cli("--emit", kind, "--root", root, "--set", "total_steps=5")
        assert r.returncode == 0, r.stderr[-2000:]
        path = os.path.join(root, name)
        text = open(path).read()
        assert os.access(path, os.X_OK)
        assert subprocess.run(["bash", "-n", path]).returncode == 0       # valid shell
        for point in ("lr_0.001-crop_padding_0", "lr_0.001-crop_padding_2",
                      "lr_0.003-crop_padding_0", "lr_0.003-crop_padding_2"):
            assert f"--workdir {root}/{point}" in text, (kind, point)
        assert text.count("--config.total_steps=5") == 4
        assert text.count("--config configs/quickstart.py") == 4
    tpu = open(os.path.join(root, "launch_tpu_vm.sh")).read()
    assert tpu.count("launch/tpu_vm.sh --config") == 4
    slurm = open(os.path.join(root, "launch_slurm.sbatch")).read()
    assert "#SBATCH --array=0-3" in slurm and "  3) ARGS=(" in slurm
    assert 'srun "${VLM_JAX_PYTHON:-.venv/bin/python}" -m launch.train "${ARGS[@]}"' in slurm
    # The launch scripts the emitted ones call.
    for script in ("launch/tpu_vm.sh", "launch/slurm.sbatch"):
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
    assert "--worker=all" in open("launch/tpu_vm.sh").read()
    assert "#SBATCH --ntasks-per-node=1" in open("launch/slurm.sbatch").read()


@pytest.mark.slow
def test_local_sweep_runs_each_point_and_collects_a_table(tmp_path, data_dir):
    # A grid of two keys, two points (each a training process): seed x crop jitter, so that the
    # points share every compiled program (the learning rate would not: a constant of the step).
    sweep = tmp_path / "seeds.py"
    sweep.write_text("from vlm_jax import sweeps\n\n\ndef get_sweep():\n    return sweeps.Sweep("
                     "config='configs/quickstart.py', points=sweeps.grid(**{'seed': [0, 1], "
                     "'data.crop_padding': [2]}))\n")
    root = str(tmp_path / "sw")
    sets = [a for kv in TINY + [f"data_dir={data_dir}", "eval.zeroshot_prefix=zs/{dataset}/"]
            for a in ("--set", kv)]
    r = _sweep_cli("--run", "local", "--root", root, *sets, sweep=str(sweep), env=process_env(1))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(open(os.path.join(root, "results.csv")).read())))
    assert [(row["seed"], row["data.crop_padding"]) for row in rows] == [("0", "2"), ("1", "2")]
    for row in rows:
        assert row["step"] == "2" and float(row["loss"]) > 0
        assert 0 <= float(row["zs/digits/zeroshot_top1"]) <= 1      # any prefix is collected
        config = open(os.path.join(root, row["point"], "config.json")).read()
        assert f'"crop_padding": {row["data.crop_padding"]}' in config
        assert f'"seed": {row["seed"]}' in config
    assert rows[0]["loss"] != rows[1]["loss"]                        # each point its own run
    md = open(os.path.join(root, "results.md")).read()
    assert md.startswith("| point | seed | data.crop_padding | step | loss |")
    assert md.count("\n") == 4
