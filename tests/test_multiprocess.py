"""Two processes on localhost (CPU, 2 devices each) take the same step as one process with 4.

tests/multiprocess_step.py runs one train step of a tiny model with the model-parallel head
(Partial FC at r = 0.5, lazy centre updates): once as a single process owning 4 virtual devices,
and once as 2 processes joined through arcface_jax.distributed (explicit coordinator variables,
gloo collectives), each feeding only its half of the global batch. Loss and every parameter must
agree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'tests', 'multiprocess_step.py')
TIMEOUT = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(
      ('JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_', 'TPU_WORKER')
    )
  }
  env.update(
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    PYTHONPATH=REPO,
    **extra,
  )
  return env


def test_two_processes_match_one(tmp_path):
  single_out, multi_out = str(tmp_path / 'single.npz'), str(tmp_path / 'multi.npz')
  address = f'localhost:{_free_port()}'
  # All three start at once: the single-process reference overlaps the two-process job.
  procs = [
    subprocess.Popen(
      [sys.executable, SCRIPT, single_out],
      env=_env(4),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
  ]
  for pid in range(2):
    env = _env(2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid))
    procs.append(
      subprocess.Popen(
        [sys.executable, SCRIPT, multi_out],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  try:
    logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]

  single, multi = np.load(single_out), np.load(multi_out)
  assert int(single['num_processes']) == 1 and int(multi['num_processes']) == 2
  assert set(single.files) == set(multi.files)
  assert np.isfinite(single['loss'])
  np.testing.assert_allclose(multi['loss'], single['loss'], rtol=1e-5)
  # Class-centre entries reach |w| ≈ 12, where a float32 ulp is 1e-6: summing the gradients of
  # two processes in another order moves a small entry by a few such ulps (seen: 1.1e-5).
  for name in set(single.files) - {'num_processes'}:
    np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=2e-5, err_msg=name)
