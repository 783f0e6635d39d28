"""Stopping a run and re-running the same command resumes at the saved step and data position,
and the resumed run reproduces the losses of a run that was never stopped."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import free_port, process_env, tiny_flags

TOTAL, EVERY = 12, 4


def _args(data_dir, workdir):
    return [sys.executable, "-m", "launch.train", "--config", "configs/quickstart.py",
            "--workdir", workdir, *tiny_flags(
                data_dir, total_steps=TOTAL, log_every_steps=1, checkpoint_every_steps=EVERY,
                async_checkpointing=True, **{"optim.warmup_steps": 2, "eval.retrieval": "()"})]


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in train}, rows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two devices (the suite's 8 would be inherited otherwise); the suite's compilation cache,
    shared by the runs (each compiles the same programs)."""
    return process_env(2)


def _run(args, env):
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _saved(workdir):
    """Complete checkpoints (an unfinished save is a '<step>.orbax-checkpoint-tmp' folder)."""
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory, env):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _run(_args(data_dir, workdir), env)
    return workdir, _losses(workdir)[0]


def _check_reproduces(workdir, want, rel=0.0):
    """Every step logged once, with the losses `want` of the uninterrupted run (bitwise by
    default: same programs, same data, same rng); its final evaluation; data-wait fractions."""
    losses, rows = _losses(workdir)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    for step, loss in want.items():
        assert losses[step] == pytest.approx(loss, rel=rel, abs=0), f"step {step}"
    assert "eval/digits/zeroshot_top1" in rows[-1]
    waits = [r["data_wait_fraction"] for r in rows if "loss" in r]
    assert waits and all(0.0 <= w <= 1.0 for w in waits)
    return rows


@pytest.mark.slow
def test_sigkill_during_a_save_and_the_rerun_reproduces_the_run(
        data_dir, tmp_path, uninterrupted, env):
    """SIGKILL while a checkpoint is being written (its temporary folder exists), one complete
    before it: the next start restores that one and, finished, the run has the losses of one never
    stopped, bitwise. (A SIGTERM saves at the step it stops: the two-process test.)"""
    workdir = str(tmp_path / "run")
    args = _args(data_dir, workdir)
    every_step = args + ["--config.checkpoint_every_steps=1", "--config.keep_checkpoints=100"]
    d = os.path.join(workdir, "checkpoints")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(every_step, stdout=subprocess.DEVNULL, stderr=log, env=env)
        caught, deadline = None, time.time() + 240
        while caught is None and time.time() < deadline and proc.poll() is None:
            names = os.listdir(d) if os.path.isdir(d) else []          # one snapshot
            done = [int(x) for x in names if x.isdigit()]
            flying = [int(x.split(".")[0]) for x in names
                      if "tmp" in x and x.split(".")[0].isdigit()]
            if done and flying and max(flying) > max(done):
                proc.kill()
                caught = max(flying)
            time.sleep(0.001)    # a save stays in flight for tens of ms; leave the run the CPU
        proc.wait()
    assert caught, "no save was caught in flight"
    assert proc.returncode == -signal.SIGKILL
    before = _saved(workdir)
    # The kill lands microseconds after the snapshot; the save it caught is almost always
    # still unfinished, and whichever is the latest complete step is where the run resumes.
    assert before and before[-1] <= caught < TOTAL
    r = _run(args, env)
    assert f"Resumed from step {before[-1]} " in r.stderr
    _check_reproduces(workdir, uninterrupted[1])
    assert not [x for x in os.listdir(d) if "tmp" in x]      # the partial save was cleaned up


@pytest.mark.slow
def test_resume_on_fewer_devices(data_dir, tmp_path):
    """Saved on 8 devices, resumed on 1: the params are resharded on restore and the run
    continues with the losses of the 8-device run (float tolerance: reduction order differs)."""
    import shutil

    from helpers import make_mesh, tiny_config
    from vlm_jax.train import trainer
    # The suite's tiny run: 8 steps, a checkpoint every 4.
    cfg = tiny_config(data_dir, **{"log_every_steps": 1, "eval.zeroshot": (),
                                   "eval.retrieval": ()})
    full = str(tmp_path / "8")
    trainer.train(cfg, full, mesh=make_mesh(8))
    want, _ = _losses(full)
    workdir = str(tmp_path / "1")
    shutil.copytree(full, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))    # back to step 4
    open(os.path.join(workdir, "metrics.jsonl"), "w").close()   # so only new steps show
    trainer.train(cfg, workdir, mesh=make_mesh(1))
    got, _ = _losses(workdir)
    assert sorted(got) == list(range(5, 9))      # resumed at 4, not started again
    for step in range(5, 9):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


@pytest.mark.slow
def test_two_processes_stop_together_resume_and_train_like_one(
        data_dir, tmp_path, uninterrupted, env):
    """Two processes joined by jax.distributed (gloo on localhost, 2 CPU devices each): a SIGTERM
    that reaches one of them stops both at the same step, saved; re-run, they resume and end
    with the losses of the one-process run at the same global batch (float tolerance: the
    reductions are split differently). Their final evaluation, each process embedding its own
    rows of the test split, is the one their checkpoint then gets in one process on 8 devices
    (launch.eval's evaluate_workdir; the command itself runs in test_interop): zero-shot
    accuracy and every retrieval recall."""
    workdir = str(tmp_path)
    port = free_port()

    def start():
        return [subprocess.Popen(_args(data_dir, workdir) + [
            "--config.eval.retrieval=('digits',)", f"--coordinator_address=localhost:{port}",
            "--num_processes=2", f"--process_id={i}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in (0, 1)]

    procs = start()
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(path) and os.path.getsize(path)):
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)         # the notice reaches one process only
    errs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], errs[0][-2000:] + errs[1][-2000:]
    saved = _saved(workdir)
    assert saved and saved[-1] < TOTAL
    for err in errs:
        assert f"stopped at step {saved[-1]} after SIGTERM" in err

    procs = start()
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert f"Resumed from step {saved[-1]} " in errs[0]
    rows = _check_reproduces(workdir, uninterrupted[1], rel=1e-4)

    from vlm_jax.train import evaluate
    got = evaluate.evaluate_workdir(workdir)
    logged = {k: v for k, v in rows[-1].items() if k.startswith("eval/")}
    assert "eval/digits/zeroshot_top1" in logged and "eval/digits/t2i_r5" in logged
    assert got == pytest.approx({"step": TOTAL, **logged})


def test_cluster_detection_initialises_only_for_several_processes():
    from vlm_jax.parallel.mesh import describe_cluster
    assert describe_cluster(environ={}) is None
    assert describe_cluster(environ={"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "a"}) is None
    assert describe_cluster(environ={"SLURM_NTASKS": "8"}) == {}
    assert describe_cluster(environ={"SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert describe_cluster(environ={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}
    assert describe_cluster("h:1", 2, 1, environ={}) == {
        "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert describe_cluster("h:1", 1, 0, environ={}) is None
    assert describe_cluster(environ={"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4",
                                     "JAX_PROCESS_ID": "3"})["process_id"] == 3
    with pytest.raises(ValueError, match="go together"):
        describe_cluster("h:1", None, 0, environ={})
