#!/usr/bin/env bash
# Train on this machine. One process drives every local GPU (JAX runs them all from one process),
# so the common case needs no launcher at all; with NUM_PROCESSES > 1 this starts that many
# processes joined through a local coordinator (CPU testing of multi-host code, or one process
# per GPU when CUDA_VISIBLE_DEVICES is split by the caller).
#
#   launch/local.sh CONFIG WORKDIR [--config.x=y ...]
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 JAX_PLATFORMS=cpu launch/local.sh configs/glint360k_r100.py:tiny /tmp/run
#
# Variables (see launch/README.md): NUM_PROCESSES (1), PORT (12355), DEVICES_PER_PROCESS (CPU
# only: virtual devices per process), PYTHON (.venv/bin/python if present, else python).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$([[ -x "$repo/.venv/bin/python" ]] && echo "$repo/.venv/bin/python" || echo python)}
num_processes=${NUM_PROCESSES:-1}
cd "$repo"

if [[ -n "${DEVICES_PER_PROCESS:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi
if [[ "$num_processes" == 1 ]]; then
  exec "$python" -m arcface_jax.train --config "$config" --workdir "$workdir" "$@"
fi

export JAX_COORDINATOR_ADDRESS="localhost:${PORT:-12355}"
export JAX_NUM_PROCESSES="$num_processes"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < num_processes; i++)); do
  JAX_PROCESS_ID=$i "$python" -m arcface_jax.train --config "$config" --workdir "$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
