"""The training spine: config checks, sharded step = single-device step, resume, preemption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import losses, models, optim, parallel, seeding, trainer
from arcface_jax.config_files import load_config
from arcface_jax.data.errors import DatasetError
from arcface_jax.train_state import create_train_state
from arcface_jax.train_step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


@pytest.fixture
def tiny_config(tmp_path_factory):
  config = load_config(TINY)
  # One shared generated dataset for the whole module keeps the tests fast.
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  return config


# ------------------------------------------------------------------ configuration and bad input


def test_unknown_override_is_one_clear_error():
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'arcface_jax.train',
      '--config',
      TINY,
      '--workdir',
      '/tmp/unused',
      '--config.train.bacth_size=8',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert 'bacth_size' in result.stderr
  assert 'Traceback' not in result.stderr


def test_batch_not_divisible_by_devices(tiny_config):
  tiny_config.train.batch_size = 12
  with pytest.raises(trainer.ConfigError, match=r'batch_size=12.*8 devices'):
    trainer.validate_config(tiny_config, num_devices=8)
  trainer.validate_config(tiny_config, num_devices=4)  # 12 splits over 4


def test_bad_values_name_the_key(tiny_config):
  tiny_config.model.dtype = 'float16'
  with pytest.raises(trainer.ConfigError, match='model.dtype'):
    trainer.validate_config(tiny_config, num_devices=1)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  with pytest.raises(trainer.ConfigError, match='not writable'):
    trainer.prepare_workdir(str(blocker / 'run'))


def test_missing_dataset_path(tiny_config, tmp_path):
  tiny_config.data.source = 'recordio'
  tiny_config.data.path = str(tmp_path / 'no_such_dataset')
  with pytest.raises(DatasetError, match='no_such_dataset'):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / 'run'))


# ------------------------------------------------------------------ the step


def _step_on_mesh(config, mesh, batch, num_steps=2, **normalisation):
  model = models.from_config(config)
  objective = losses.build_objective(
    config.loss, num_classes=10, embedding_dim=config.model.embedding_dim
  )
  schedule = optim.make_schedule(config.train)
  tx = optim.make_optimizer(config.train)
  init = jax.jit(
    lambda key: create_train_state(key, model, objective, tx, config.data.image_size),
    out_shardings=parallel.replicated(mesh),
  )
  state = init(seeding.keys(0))
  step = jax.jit(
    make_train_step(model, objective, tx, schedule, jax.random.PRNGKey(1), **normalisation),
    in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
    out_shardings=parallel.replicated(mesh),
  )
  losses_seen = []
  for _ in range(num_steps):
    state, metrics = step(state, parallel.global_batch(mesh, batch))
    losses_seen.append(float(metrics['loss']))
  return state, losses_seen


def _random_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  size, batch = config.data.image_size, config.train.batch_size
  return {
    'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
    'label': rng.integers(0, 10, size=batch).astype(np.int32),
  }


def test_sharded_step_equals_single_device(tiny_config):
  assert jax.device_count() == 8
  batch = _random_batch(tiny_config)
  state8, loss8 = _step_on_mesh(tiny_config, parallel.make_mesh(8), batch)
  state1, loss1 = _step_on_mesh(tiny_config, parallel.make_mesh(1), batch)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
  flat8, flat1 = jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)
  for a, b in zip(flat8, flat1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state8.batch_stats), jax.tree.leaves(state1.batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_uint8_batches_are_normalised_in_the_step(tiny_config):
  # The pipeline's uint8 images, normalised on the device with config.data-style per-channel
  # constants, train exactly as the same images normalised on the host in float64.
  mesh = parallel.make_mesh(1)
  rng = np.random.default_rng(1)
  size, batch = tiny_config.data.image_size, tiny_config.train.batch_size
  pixels = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=batch).astype(np.int32)
  mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
  on_host = ((pixels - np.array(mean)) / np.array(std)).astype(np.float32)
  state_u8, loss_u8 = _step_on_mesh(
    tiny_config,
    mesh,
    {'image': pixels, 'label': labels},
    num_steps=1,
    image_mean=mean,
    image_std=std,
  )
  state_f32, loss_f32 = _step_on_mesh(
    tiny_config,
    mesh,
    {'image': on_host, 'label': labels},
    num_steps=1,
    image_mean=mean,
    image_std=std,
  )
  np.testing.assert_allclose(loss_u8, loss_f32, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_u8.params), jax.tree.leaves(state_f32.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_non_finite_step_is_skipped_and_counted(tiny_config):
  mesh = parallel.make_mesh(1)
  good = _random_batch(tiny_config)
  bad = dict(good, image=np.full_like(good['image'], np.nan))
  state, _ = _step_on_mesh(tiny_config, mesh, good, num_steps=1)
  model = models.from_config(tiny_config)
  objective = losses.build_objective(
    tiny_config.loss, num_classes=10, embedding_dim=tiny_config.model.embedding_dim
  )
  schedule = optim.make_schedule(tiny_config.train)
  tx = optim.make_optimizer(tiny_config.train)
  # Jitted exactly as `_step_on_mesh` does, so the program compiled there is reused.
  step = jax.jit(
    make_train_step(model, objective, tx, schedule, jax.random.PRNGKey(1)),
    in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
    out_shardings=parallel.replicated(mesh),
  )
  before = jax.device_get(state)
  after, metrics = step(state, parallel.global_batch(mesh, bad))
  assert not np.isfinite(float(metrics['loss']))
  assert int(after.step) == int(before.step) + 1
  assert int(after.skipped_steps) == 1 and int(after.consecutive_skips) == 1
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize('where', ['backbone', 'head'])
def test_a_nan_gradient_under_a_finite_loss_is_skipped(tiny_config, where):
  """The loss is finite, but sqrt's derivative at 0 (+Inf, times 0) makes the `where` gradient
  NaN: the step must be skipped all the same."""
  mesh = parallel.make_mesh(1)
  state, _ = _step_on_mesh(tiny_config, mesh, _random_batch(tiny_config), num_steps=1)
  model = models.from_config(tiny_config)
  objective = losses.build_objective(
    tiny_config.loss, num_classes=10, embedding_dim=tiny_config.model.embedding_dim
  )

  def poisoned(params, head_state, embeddings, labels, step, rng=None):
    loss, head_state, metrics = objective(params, head_state, embeddings, labels, step, rng=rng)
    source = embeddings if where == 'backbone' else jax.tree.leaves(params)[0]
    return loss + 0.0 * jnp.sqrt(0.0 * jnp.sum(source)), head_state, metrics

  tx = optim.make_optimizer(tiny_config.train)
  step = jax.jit(
    make_train_step(
      model, poisoned, tx, optim.make_schedule(tiny_config.train), jax.random.PRNGKey(1)
    )
  )
  before = jax.device_get(state)
  after, metrics = step(state, _random_batch(tiny_config))
  assert np.isfinite(float(metrics['loss']))
  assert int(after.skipped_steps) == 1 and float(metrics['skipped']) == 1.0
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_finite_norm_flags_nan_inf_and_an_overflowing_norm():
  from arcface_jax.train_step import _finite_norm

  sound = {'a': jnp.ones((3, 2)), 'b': {'c': jnp.full((4,), 1e18)}}
  norm, finite = _finite_norm(sound)
  assert bool(finite)
  np.testing.assert_allclose(float(norm), np.sqrt(6 + 4 * 1e36), rtol=1e-6)
  for bad in (np.nan, np.inf, -np.inf, 1e20):  # 1e20² overflows float32: no sound update
    tree = {'a': jnp.ones((3, 2)), 'b': {'c': jnp.array([0.0, bad, 1.0, 2.0], jnp.float32)}}
    assert not bool(_finite_norm(tree)[1]), bad
  assert bool(_finite_norm({})[1])  # a model without batch statistics


def test_keep_checkpoints_below_one_is_refused(tiny_config):
  tiny_config.train.keep_checkpoints = 0
  with pytest.raises(trainer.ConfigError, match=r'train.keep_checkpoints=0 must be at least 1'):
    trainer.validate_config(tiny_config, num_devices=1)


def _diverging(config, learning_rate):
  config.train.learning_rate = learning_rate  # reached after the recipe's 2 warm-up steps
  config.train.clip_grad_norm = 0.0
  config.train.num_steps = 12
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.train.max_consecutive_bad_steps = 1
  return config


def _saved_states(workdir):
  """Every checkpoint of `workdir` as host arrays (restored without a target)."""
  import orbax.checkpoint as ocp

  from arcface_jax import checkpointing

  checkpointer = checkpointing.Checkpointer(workdir)
  try:
    return {
      step: checkpointing._join(
        checkpointer.manager.restore(
          step,
          args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore() for item in ('model', 'train')}
          ),
        )
      )
      for step in checkpointer.manager.all_steps()
    }
  finally:
    checkpointer.close()


def test_divergence_saves_only_sound_states_and_resume_does_not_fail_at_once(tiny_config, tmp_path):
  from arcface_jax import state_health

  # lr=1e6 after a warm-up from 0: the loss stays finite while the batch-norm statistics blow
  # up; the states the failing steps started from must not be what the next start resumes.
  config = _diverging(tiny_config, 1e6)
  workdir = str(tmp_path / 'run')
  mesh = parallel.make_mesh(1)
  with pytest.raises(trainer.TrainingDivergedError) as error:
    trainer.train_and_evaluate(config, workdir, mesh=mesh)
  message = str(error.value)
  assert 'Lower config.train.learning_rate (now 1e+06)' in message
  newest = int(message.split('newest sound checkpoint is step ')[1].split(',')[0])
  saved = _saved_states(workdir)
  assert saved and max(saved) == newest
  assert any(
    name.endswith('-diverged') for name in os.listdir(os.path.join(workdir, 'damaged_checkpoints'))
  )
  for step, state in saved.items():
    assert state_health.train_state_problems(state) == [], step
  # The next start resumes from that sound state; with a sane learning rate it trains on.
  config.train.learning_rate = 1e-3
  config.train.num_steps = newest + 2
  state = trainer.train_and_evaluate(config, workdir, mesh=mesh)
  assert int(state.step) == newest + 2


def test_divergence_right_after_a_resume_blames_the_checkpoint(tiny_config, tmp_path):
  from arcface_jax import state_health
  from arcface_jax.checkpointing import Checkpointer

  config = _diverging(tiny_config, tiny_config.train.learning_rate)
  config.train.num_steps = 2
  workdir = str(tmp_path / 'run')
  mesh = parallel.make_mesh(1)
  trainer.train_and_evaluate(config, workdir, mesh=mesh)
  # A state every forward pass of which overflows, though finite and within the health bounds.
  state = _saved_states(workdir)[2]
  poisoned = jax.device_put(
    state.replace(
      step=np.asarray(3, np.int32),
      params={
        'backbone': jax.tree.map(lambda x: np.full_like(x, 9e9), state.params['backbone']),
        'head': state.params['head'],
      },
    )
  )
  assert state_health.train_state_problems(poisoned) == []
  checkpointer = Checkpointer(workdir)
  checkpointer.save(poisoned, step=3, force=True)
  checkpointer.close()
  config.train.num_steps = 8
  with pytest.raises(trainer.TrainingDivergedError) as error:
    trainer.train_and_evaluate(config, workdir, mesh=mesh)
  message = str(error.value)
  assert 'resuming from checkpoint step 3' in message and 'set aside' in message
  assert 'restored state itself is the cause, not config.train.learning_rate' in message
  assert 'Lower config.train.learning_rate' not in message
  assert 'next start resumes from step 2' in message
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '3-diverged'))


# ------------------------------------------------------------------ resume and preemption


def test_resume_after_sigterm_equals_uninterrupted(tiny_config, tmp_path):
  tiny_config.train.num_steps = 6
  tiny_config.train.checkpoint_every = 0  # only the preemption save and the final one
  mesh = parallel.make_mesh(2)
  full = trainer.train_and_evaluate(tiny_config, str(tmp_path / 'full'), mesh=mesh)
  full = jax.device_get(full)

  def preempt_at_3(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = str(tmp_path / 'interrupted')
  stopped = trainer.train_and_evaluate(tiny_config, workdir, mesh=mesh, step_callback=preempt_at_3)
  assert int(stopped.step) == 3
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
  resumed = jax.device_get(trainer.train_and_evaluate(tiny_config, workdir, mesh=mesh))
  assert int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  for a, b in zip(jax.tree.leaves(resumed.opt_state), jax.tree.leaves(full.opt_state)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _read_until(process, marker, deadline_s):
  seen, deadline = '', time.time() + deadline_s
  for line in process.stdout:
    seen += line
    if marker in line or time.time() > deadline:
      break
  return seen


def test_sigterm_on_the_command_line_while_compiling_and_mid_run(tmp_path, tiny_config):
  workdir = tmp_path / 'run'
  command = [
    sys.executable,
    '-m',
    'arcface_jax.train',
    '--config',
    TINY,
    '--workdir',
    str(workdir),
    '--config.train.num_steps=100000',
    '--config.train.log_every=1',
    f'--config.data.data_dir={tiny_config.data.data_dir}',
  ]
  # While the train step compiles: MobileFaceNet's step compiles for far longer than the few
  # seconds allowed (~100 CPU-s at 16 px on a 2-core machine, the longest of the non-slow
  # backbones; a fresh compilation cache, so no earlier run serves it), yet the process stops at
  # once, with nothing to save before the first step. Its initialisation, which runs before,
  # compiles in a fraction of IResNet-50's (23 against 59 CPU-s to reach the step's compile).
  compiling = subprocess.Popen(
    command + ['--config.model.name=mobilefacenet'],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'empty_cache')),
  )
  seen = _read_until(compiling, 'compiling the train step', 240)
  sent = time.time()
  compiling.send_signal(signal.SIGTERM)
  rest, _ = compiling.communicate(timeout=120)
  took, seen = time.time() - sent, seen + rest
  assert compiling.returncode == 0, seen[-3000:]
  assert 'stopped by a signal while compiling the train step, before the first step' in seen
  assert 'compiled the train step' not in seen and took < 10, (took, seen[-3000:])
  saved = workdir / 'checkpoints'
  assert not saved.exists() or not [s for s in os.listdir(saved) if s.isdigit()]
  # Started again (the workdir is free), it trains; SIGTERM mid-run saves and exits cleanly.
  process = subprocess.Popen(
    command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  seen = _read_until(process, 'step 3/', 240)
  process.send_signal(signal.SIGTERM)
  rest, _ = process.communicate(timeout=120)
  seen += rest
  assert process.returncode == 0, seen[-3000:]
  assert 'preempted: saved a checkpoint' in seen
  steps = [int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()]
  assert steps and max(steps) >= 3
