"""A gs:// workdir trains, checkpoints, evaluates and resumes, with no local path behind it.

The bucket is `fake_gcs` (tests/fake_gcs.py): fsspec's `gs` filesystem and orbax's TensorStore
kvstore on a local directory. Everything above them runs as it would against Cloud Storage:
epath's fsspec backend, orbax's object-store commit (a commit_success.txt instead of a rename),
our lock, checksums, config.json, TensorBoard upload and evaluation outputs. The test runs from an
empty current directory and checks that nothing landed there.
"""

from __future__ import annotations

import importlib
import json
import os
import signal

import fake_gcs as fake_gcs_module
import jax
import numpy as np
import pytest
from etils import epath

from arcface_jax import checkpoint_integrity, parallel, paths, trainer, workdir_lock
from arcface_jax.config_files import load_config
from arcface_jax.search_results import read_scalars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')
fake_gcs = fake_gcs_module.fake_gcs  # the fixture (tests/fake_gcs.py)


def test_gs_workdir_trains_checkpoints_and_resumes_like_an_uninterrupted_run(
  fake_gcs, tmp_path_factory, caplog
):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  # The same programs as test_train's local resume test: in one session they compile once.
  config.train.num_steps = 6
  config.train.checkpoint_every = 0  # only the preemption save and the final one
  mesh = parallel.make_mesh(2)
  full = jax.device_get(trainer.train_and_evaluate(config, 'gs://bucket/full', mesh=mesh))

  def preempt_at_3(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = 'gs://bucket/runs/interrupted'
  stopped = trainer.train_and_evaluate(config, workdir, mesh=mesh, step_callback=preempt_at_3)
  assert int(stopped.step) == 3
  on_disk = fake_gcs / 'bucket' / 'runs' / 'interrupted'
  step_3 = on_disk / 'checkpoints' / '3'
  assert (step_3 / 'commit_success.txt').exists()  # orbax's object-store commit, not a rename
  assert (step_3 / checkpoint_integrity.SUMS_FILE).exists()
  assert checkpoint_integrity.verify(epath.Path(workdir) / 'checkpoints' / '3') is None
  assert not (on_disk / workdir_lock.LOCK_FILE).exists()  # released at the clean stop

  # A lock left by a process that died on this host is taken over, as on a local disk.
  dead = workdir_lock.Holder(
    pid=2**22 + 7, host=workdir_lock.socket.gethostname(), started='earlier'
  )
  (on_disk / workdir_lock.LOCK_FILE).write_text(json.dumps(dead.__dict__))
  resumed = jax.device_get(trainer.train_and_evaluate(config, workdir, mesh=mesh))
  assert 'best-effort' in caplog.text and 'taking over a stale lock' in caplog.text
  assert int(resumed.step) == 6
  for a, b in zip(
    jax.tree.leaves((resumed.params, resumed.opt_state)),
    jax.tree.leaves((full.params, full.opt_state)),
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

  assert sorted(p.name for p in (on_disk / 'checkpoints').iterdir()) == ['3', '6']
  assert json.loads((on_disk / 'config.json').read_text())['train']['num_steps'] == 6
  assert (on_disk / 'best.json').exists() and (on_disk / 'best').is_dir()
  scalars = read_scalars(f'{workdir}/tensorboard')  # uploaded when each run ended
  assert 'train/loss' in scalars and any(k.startswith('eval/') for k in scalars)


def test_gs_lock_is_held_against_a_live_process_and_says_it_is_best_effort(fake_gcs, caplog):
  workdir = 'gs://bucket/locked'
  with workdir_lock.WorkdirLock(workdir):
    assert 'best-effort' in caplog.text
    holder = workdir_lock.live_holder(workdir)
    assert holder is not None and holder.pid == os.getpid()
    # The same host's other process, still running (our parent), holds it: refused.
    record = json.dumps(
      {'pid': os.getppid(), 'host': workdir_lock.socket.gethostname(), 'started': 'now'}
    )
    (fake_gcs / 'bucket' / 'locked' / workdir_lock.LOCK_FILE).write_text(record)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f'pid {os.getppid()}'):
      workdir_lock.WorkdirLock(workdir).acquire()
  # Released only by its owner: the file now names the other process, so it stays.
  assert (fake_gcs / 'bucket' / 'locked' / workdir_lock.LOCK_FILE).exists()


def test_resolve_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.resolve('gs://bucket/a/b')) == 'gs://bucket/a/b'
  assert os.fspath(paths.resolve('runs/x')) == os.path.join(str(tmp_path), 'runs', 'x')
  assert paths.is_remote('gs://b/x') and not paths.is_remote('/tmp/x')


def test_gs_workdir_without_the_gcs_extra_is_one_clear_config_error():
  for backend in ('gcsfs', 'tensorflow'):  # either would take the path to the network
    try:
      importlib.import_module(backend)
    except ImportError:
      continue
    pytest.skip(f'{backend} is installed: a gs:// path would reach the network')
  with pytest.raises(trainer.ConfigError, match=r'arcface_jax\[gcs\]'):
    trainer.prepare_workdir('gs://bucket/run')
