#!/usr/bin/env bash
# Train on every worker of a (multi-host) Cloud TPU VM: one launch.train process per host; JAX
# finds the other hosts itself (TPU_WORKER_HOSTNAMES), so no coordinator flags are needed.
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_vm.sh --config configs/clip.py --workdir /mnt/runs/clip
#
# Environment:
#   TPU_NAME  the TPU VM (required);  ZONE  its zone (required);  PROJECT  gcloud project (optional)
#   REPO_DIR  where this repository is checked out on every worker (default: ~/vlm_jax), with
#             `make install ACCEL=tpu` run there once (creates .venv with jax[tpu])
# The workdir must be a folder every worker sees at the same path (a Filestore/NFS mount):
# all processes write one Orbax checkpoint together and process 0 writes the metrics.
# `launch/tpu_vm.sh --setup` runs `make install ACCEL=tpu` in REPO_DIR on all workers (the
# repository must be checked out there already).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR="${REPO_DIR:-~/vlm_jax}"
if [[ "${1:-}" == "--setup" ]]; then
  remote="cd $REPO_DIR && make install ACCEL=tpu"
else
  remote="cd $REPO_DIR && .venv/bin/python -m launch.train $(printf '%q ' "$@")"
fi
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$remote"
