"""Joining a multi-process JAX job when launched as one.

Three launchers are recognised, in this order:
  explicit: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID (any launcher,
            and the localhost multi-process test);
  Slurm:    more than one task (SLURM_NTASKS > 1); JAX reads the rest from Slurm's variables;
  TPU VMs:  more than one worker host (TPU_WORKER_HOSTNAMES lists several); JAX asks the TPU
            metadata for the rest.
A single process (the common case, one host with one or more GPUs) initialises nothing.

On the CPU backend a multi-process job also needs cross-process collectives (the model-parallel
head all-gathers embeddings and reduces its softmax across every device): gloo is selected unless
JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise. GPUs use NCCL and TPUs their ICI regardless.
See launch/README.md for the launchers and their variables.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def launcher_kind(environ: dict[str, str] | None = None) -> str | None:
  """'explicit', 'slurm', 'tpu' or None (single process), from the environment."""
  env = os.environ if environ is None else environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'explicit'
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1:
    return 'slurm'
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return 'tpu'
  return None


def initialize_if_launched() -> bool:
  """Calls jax.distributed.initialize when the environment describes a multi-process job."""
  kind = launcher_kind()
  if kind is None:
    return False
  if not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    # Only read by the CPU client, and only before it starts: harmless on GPU/TPU hosts.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if kind == 'explicit':
    missing = [v for v in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID') if v not in os.environ]
    if missing:
      raise ValueError(
        f'JAX_COORDINATOR_ADDRESS is set but {missing} are not: set all three '
        '(see launch/README.md)'
      )
    jax.distributed.initialize(
      coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(os.environ['JAX_NUM_PROCESSES']),
      process_id=int(os.environ['JAX_PROCESS_ID']),
    )
  else:
    jax.distributed.initialize()
  logging.info(
    'joined a %s job as process %d of %d with %d local / %d global devices',
    kind,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
