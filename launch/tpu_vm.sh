#!/usr/bin/env bash
# A multi-host Cloud TPU VM slice: the same command on every worker, one process per host.
# jax.distributed.initialize() gets the coordinator and ranks from the TPU metadata
# (arcface_jax.distributed, TPU_WORKER_HOSTNAMES lists several hosts).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh CONFIG WORKDIR [--config.x=y ...]
#
# Variables (see launch/README.md): TPU_NAME, ZONE (required); PROJECT (gcloud default if unset);
# REMOTE_REPO (checkout path on the workers, default ~/arcface_jax); PYTHON (interpreter on the
# workers, default REMOTE_REPO/.venv/bin/python). WORKDIR should be a gs:// path or shared disk,
# so that every host writes to the same checkpoint directory; a gs:// WORKDIR needs the `gcs`
# extra on every worker (pip install -e '.[gcs]': gcsfs and google-cloud-storage).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
remote_repo=${REMOTE_REPO:-'~/arcface_jax'}
python=${PYTHON:-$remote_repo/.venv/bin/python}
project_flag=()
[[ -n "${PROJECT:-}" ]] && project_flag=(--project "$PROJECT")
config=$(printf '%q' "$1") workdir=$(printf '%q' "$2")
overrides=$(printf '%q ' "${@:3}")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" --worker=all \
  --command "cd $remote_repo && $python -m arcface_jax.train --config $config --workdir $workdir $overrides"
