"""Checkpoints that nothing loses: checksums, damaged steps set aside, a full disk one clear error."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from arcface_jax import checkpoint_integrity, parallel, trainer, workdir_lock, write_errors
from arcface_jax.checkpointing import Checkpointer, CheckpointError, restore_model_variables
from arcface_jax.config_files import load_config
from arcface_jax.inference import abstract_model_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


def _tiny(tmp_path_factory):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny run with checkpoints at steps 2 and 4, and its final state (the step-4 values)."""
  config = _tiny(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  state = trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(1))
  return config, workdir, jax.device_get(state)


@pytest.fixture
def run_copy(trained, tmp_path):
  config, workdir, state = trained
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return config, copy, state


def _abstract(state):
  sharding = parallel.replicated(parallel.make_mesh(1))
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding), state
  )


def _array_files(step_dir, item='model'):
  """The tensorstore data files (in the item's `d/` folders), largest first."""
  files = [
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(step_dir, item))
    if os.path.basename(root) == 'd'
    for name in names
  ]
  return sorted(files, key=os.path.getsize, reverse=True)


def _truncate(step_dir):
  path = _array_files(step_dir)[0]
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete_array(step_dir):
  os.remove(_array_files(step_dir)[0])


def _flip_bytes(step_dir):
  path = _array_files(step_dir)[0]
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def _delete_model_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'model'))


def _delete_ocdbt_manifest(step_dir):
  os.remove(os.path.join(step_dir, 'model', 'manifest.ocdbt'))


def _truncate_without_checksums(step_dir):
  """Damage orbax itself notices, in a step saved before its checksums were written."""
  os.remove(os.path.join(step_dir, checkpoint_integrity.SUMS_FILE))
  os.remove(os.path.join(step_dir, 'model', 'manifest.ocdbt'))


DAMAGE = {
  'truncated-array': (_truncate, 'checksum-mismatch'),
  'deleted-array': (_delete_array, 'missing-files'),
  'flipped-bytes': (_flip_bytes, 'checksum-mismatch'),
  'missing-model-item': (_delete_model_item, 'missing-model'),
  'missing-ocdbt-manifest': (_delete_ocdbt_manifest, 'missing-files'),
  'unverified-and-unreadable': (_truncate_without_checksums, 'unreadable'),
}


def test_checksums_are_written_and_sha256sum_agrees(trained):
  _, workdir, _ = trained
  steps = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  assert steps == ['2', '4']
  for step in steps:
    step_dir = os.path.join(workdir, 'checkpoints', step)
    listed = open(os.path.join(step_dir, 'SHA256SUMS')).read()
    assert 'model/' in listed and 'train/' in listed
    # An independent reader of the format: GNU coreutils.
    result = subprocess.run(
      ['sha256sum', '--check', '--strict', '--quiet', 'SHA256SUMS'],
      cwd=step_dir,
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert checkpoint_integrity.verify(step_dir) is None


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_latest_is_set_aside_and_the_previous_one_restored(run_copy, damage, caplog):
  _, workdir, final = run_copy
  damage_fn, reason = DAMAGE[damage]
  step4 = os.path.join(workdir, 'checkpoints', '4')
  damage_fn(step4)
  with caplog.at_level(logging.WARNING):
    checkpointer = Checkpointer(workdir, save_every=2)
    state = checkpointer.restore_latest(_abstract(final))
    checkpointer.close()
  assert int(state.step) == 2
  warning = ' '.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert 'checkpoint step 4' in warning and 'damaged' in warning, warning
  aside = os.path.join(workdir, 'damaged_checkpoints', f'4-{reason}')
  assert os.path.isdir(aside), os.listdir(os.path.join(workdir, 'damaged_checkpoints'))
  assert 'step 4' in open(os.path.join(aside, 'DAMAGE.txt')).read()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  # Step 2 restored bit for bit (its checksums held).
  assert checkpoint_integrity.verify(os.path.join(workdir, 'checkpoints', '2')) is None


def test_model_loading_falls_back_and_sets_aside(run_copy, caplog):
  config, workdir, final = run_copy
  _flip_bytes(os.path.join(workdir, 'checkpoints', '4'))
  mesh = parallel.make_mesh(1)
  _, abstract = abstract_model_variables(config, mesh)
  with caplog.at_level(logging.WARNING):
    variables, step = restore_model_variables(workdir, abstract)
  assert step == 2
  assert 'checkpoint step 4' in caplog.text
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '4-checksum-mismatch'))
  # Asked for by number, a damaged step is an error, not a silent substitute.
  _flip_bytes(os.path.join(workdir, 'checkpoints', '2'))
  with pytest.raises(CheckpointError, match='step 2 .*damaged'):
    restore_model_variables(workdir, abstract, step=2)
  del variables, final


def test_model_loading_leaves_damage_in_place_while_training_holds_the_workdir(run_copy):
  config, workdir, _ = run_copy
  _flip_bytes(os.path.join(workdir, 'checkpoints', '4'))
  _, abstract = abstract_model_variables(config, parallel.make_mesh(1))
  with workdir_lock.WorkdirLock(workdir):
    _, step = restore_model_variables(workdir, abstract)
  assert step == 2
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))


def test_training_resumes_from_the_newest_intact_checkpoint(run_copy, caplog):
  config, workdir, final = run_copy
  _truncate(os.path.join(workdir, 'checkpoints', '4'))
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(1))
  assert 'checkpoint step 4' in caplog.text
  # Resumed at 2 and retrained 3..4 in the same data order: the same step-4 state again.
  assert int(state.step) == 4
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(final.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  assert checkpoint_integrity.verify(os.path.join(workdir, 'checkpoints', '4')) is None


def test_intact_checkpoint_of_another_config_is_an_error_not_damage(run_copy):
  config, workdir, final = run_copy
  abstract = _abstract(final)
  wider = abstract.replace(
    params={
      'backbone': abstract.params['backbone'],
      'head': jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
          (a.shape[0] + 3,) + a.shape[1:], a.dtype, sharding=a.sharding
        ),
        abstract.params['head'],
      ),
    }
  )
  checkpointer = Checkpointer(workdir)
  with pytest.raises(CheckpointError, match='step 4 .*intact but does not fit'):
    checkpointer.restore_latest(wider)
  checkpointer.close()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
  """A real 16 MiB filesystem (tmpfs) that fills up; skipped where mounting is not allowed."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  result = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(mount)], capture_output=True, text=True
  )
  if result.returncode:
    pytest.skip(f'cannot mount a small tmpfs here (needs root): {result.stderr.strip()}')
  try:
    yield str(mount)
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


def _fill(mount, leave_bytes):
  """Fills the filesystem up to `leave_bytes` of free space with one file; returns its path."""
  filler = os.path.join(mount, 'filler')
  free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
  with open(filler, 'wb') as f:
    f.truncate(0)
    chunk = b'\0' * (1 << 16)
    for _ in range(max(free - leave_bytes, 0) // len(chunk)):
      f.write(chunk)
  return filler


def _tree_bytes(path):
  return sum(
    os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path) for n in names
  )


def test_disk_full_while_saving_is_one_clear_error_and_keeps_the_checkpoint(
  trained, small_disk, capfd
):
  config, source, final = trained
  workdir = os.path.join(small_disk, 'run')
  shutil.copytree(source, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))  # resume at 2: step 4 is saved again
  # Room for the run's logs, not for another checkpoint.
  filler = _fill(small_disk, _tree_bytes(os.path.join(source, 'checkpoints', '4')) // 3)
  capfd.readouterr()
  with pytest.raises(write_errors.WorkdirWriteError) as error:
    trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(1))
  message = str(error.value)
  assert 'the disk is full' in message and 'free some space' in message, message
  assert 'newest: step 2' in message
  # One error: no traceback from the checkpoint library's background writers.
  assert 'Traceback' not in capfd.readouterr().err
  assert checkpoint_integrity.verify(os.path.join(workdir, 'checkpoints', '2')) is None
  # After freeing space the same command resumes from step 2 and writes step 4 again.
  os.remove(filler)
  state = jax.device_get(trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(1)))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(final.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_disk_full_while_writing_tensorboard_is_one_error(small_disk, capfd):
  from arcface_jax import reporting

  workdir = os.path.join(small_disk, 'run')
  reporter = reporting.Reporter(workdir, total_steps=10, global_batch_size=8, log_every=1)
  reporter.scalars(1, {'loss': 1.0})
  _fill(small_disk, 0)
  with pytest.raises(OSError) as error:
    for step in range(2, 2000):  # until the event file's buffer reaches the full disk
      reporter.scalars(step, {f'metric_{i}': float(i) for i in range(50)})
  assert write_errors.is_out_of_space(error.value)
  reporter.close()  # writes nothing more, raises nothing more
  assert 'Traceback' not in capfd.readouterr().err  # no background writer thread reported it


def test_checkpoint_holding_a_blown_up_state_is_set_aside(run_copy, caplog):
  """As an older version saved on divergence: finite, but batch-norm variances of 1e25."""
  import orbax.checkpoint as ocp

  from arcface_jax import checkpointing

  _, workdir, final = run_copy
  checkpointer = Checkpointer(workdir)
  state = checkpointer.restore(_abstract(final), 4)
  blown = state.replace(batch_stats=jax.tree.map(lambda x: x * 1e25 + 1e25, state.batch_stats))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  checkpointer.manager.reload()
  items = checkpointing._split(blown)  # written past the health check, as the old code did
  checkpointer.manager.save(
    4,
    args=ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()}),
    force=True,
  )
  checkpointer.close()
  with pytest.raises(checkpointing.UnsoundStateError, match='batch_stats'):
    Checkpointer(workdir).save(blown, step=6, force=True)  # today's saves refuse it
  with caplog.at_level(logging.WARNING):
    checkpointer = Checkpointer(workdir)
    restored = checkpointer.restore_latest(_abstract(final))
    checkpointer.close()
  assert int(restored.step) == 2
  assert 'checkpoint step 4' in caplog.text and 'diverged' in caplog.text
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '4-unsound'))
