"""Run, emit or collect a sweep (a base recipe and a grid / zip / list of overrides).

  python -m launch.sweep --sweep configs/sweeps/quickstart.py --run local       # one after another
  python -m launch.sweep --sweep configs/sweeps/quickstart.py --emit tpu_vm     # writes a script
  python -m launch.sweep --sweep configs/sweeps/quickstart.py --emit slurm      # an array job
  python -m launch.sweep --sweep configs/sweeps/quickstart.py --collect         # CSV + markdown

Each point trains in ROOT/<point name> (ROOT: --root, default workdirs/sweeps/<sweep name>).
`--set KEY=VALUE` (repeatable) overrides a config key in every point, e.g. a short smoke run.
Running again resumes each point; finished points only re-report their evaluation.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

from absl import app, flags, logging

from launch import runtime
from vlm_jax import sweeps

SWEEP = flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().")
ROOT = flags.DEFINE_string("root", None, "Folder of the points' workdirs "
                           "(default workdirs/sweeps/<sweep name>).")
RUN = flags.DEFINE_enum("run", None, ["local"], "Train every point here, one after another.")
EMIT = flags.DEFINE_enum("emit", None, ["tpu_vm", "slurm"], "Write a launch script for every "
                         "point: ROOT/launch_tpu_vm.sh or ROOT/launch_slurm.sbatch.")
COLLECT = flags.DEFINE_bool("collect", False, "Gather each point's final metrics into "
                            "ROOT/results.csv and ROOT/results.md.")
SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override applied to every point.")


def _common() -> dict:
    out = {}
    for item in SET.value:
        key, sep, value = item.partition("=")
        if not sep:
            raise app.UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value            # a bare string
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not SWEEP.value:
        raise app.UsageError("--sweep is required")
    if not (RUN.value or EMIT.value or COLLECT.value):
        raise app.UsageError("say what to do: --run local, --emit tpu_vm|slurm and/or --collect")
    sweep = sweeps.load(SWEEP.value)
    root = ROOT.value or os.path.join("workdirs", "sweeps", sweep.name)
    os.makedirs(root, exist_ok=True)
    common = _common()
    dirs = sweeps.workdirs(sweep, root)
    if EMIT.value:
        name, text = (("launch_tpu_vm.sh", sweeps.tpu_vm_script(sweep, root, common))
                      if EMIT.value == "tpu_vm" else
                      ("launch_slurm.sbatch", sweeps.slurm_script(sweep, root, common)))
        path = os.path.join(root, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        print(path)
    if RUN.value == "local":
        failed = []
        for i, (point, workdir) in enumerate(zip(sweep.points, dirs)):
            logging.info("sweep %s: point %d/%d %s -> %s", sweep.name, i + 1, len(dirs),
                         point, workdir)
            cmd = [sys.executable, "-m", "launch.train",
                   *sweeps.train_args(sweep, point, workdir, common)]
            if subprocess.run(cmd).returncode != 0:
                failed.append(os.path.basename(workdir))
                logging.error("point %s failed; going on with the others", workdir)
        if failed:
            logging.error("%d of %d points failed: %s", len(failed), len(dirs), failed)
    if COLLECT.value or RUN.value:
        table_csv, table_md = sweeps.collect(sweep, root)
        for name, text in (("results.csv", table_csv), ("results.md", table_md)):
            with open(os.path.join(root, name), "w") as f:
                f.write(text)
        print(table_md)
    if RUN.value == "local" and failed:
        sys.exit(1)


if __name__ == "__main__":
    runtime.run(main, "launch.sweep")
