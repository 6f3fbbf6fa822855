"""One seed per run: the root key's split, and the same initial weights wherever they are drawn."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest

from arcface_jax import models, optim, parallel, seeding, trainer
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


@pytest.fixture
def tiny_config(tmp_path_factory):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  return config


def test_keys_are_one_split_of_the_seed(tiny_config):
  keys = seeding.keys(tiny_config)
  assert tuple(keys) == seeding.PURPOSES
  bits = {p: tuple(np.asarray(jax.random.key_data(k)).ravel()) for p, k in keys.items()}
  assert len(set(bits.values())) == len(bits)  # every purpose its own stream
  expected = jax.random.split(jax.random.key(tiny_config.seed), len(seeding.PURPOSES))
  for key, want in zip(keys.values(), expected):
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(want))
  same = seeding.keys(tiny_config.seed)  # the config or its seed: the same keys
  assert all(
    np.array_equal(jax.random.key_data(same[p]), jax.random.key_data(keys[p])) for p in keys
  )
  other = seeding.keys(tiny_config.seed + 1)
  assert seeding.integer_seed(other['data']) != seeding.integer_seed(keys['data'])


def test_the_demo_starts_from_the_trainers_initial_weights(tiny_config, tmp_path):
  """The trainer's own initial backbone equals the demo's "untrained network" bit for bit.

  The recipe's warm-up starts at a learning rate of 0, so the first step leaves the parameters
  exactly as the trainer drew them; the run is stopped there (SIGTERM, the preemption path) and
  its parameters compared. The recipe is the one other tests train, so it compiles once.
  """
  assert float(optim.make_schedule(tiny_config.train)(0)) == 0.0

  def stop_after_the_first_step(step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  state = trainer.train_and_evaluate(
    tiny_config,
    str(tmp_path / 'run'),
    mesh=parallel.make_mesh(1),
    step_callback=stop_after_the_first_step,
  )
  assert int(state.step) == 1
  started = jax.device_get(state.params['backbone'])
  demo = jax.device_get(models.initial_variables(tiny_config))
  assert jax.tree.structure(started) == jax.tree.structure(demo['params'])
  for got, want in zip(jax.tree.leaves(started), jax.tree.leaves(demo['params'])):
    np.testing.assert_array_equal(got, want)
  assert jax.tree.structure(jax.device_get(state.batch_stats)) == jax.tree.structure(
    demo['batch_stats']
  )
  # The check has teeth: another seed starts elsewhere.
  tiny_config.seed += 1
  other = jax.tree.leaves(jax.device_get(models.initial_variables(tiny_config))['params'])
  assert any(not np.array_equal(a, b) for a, b in zip(other, jax.tree.leaves(started)))
