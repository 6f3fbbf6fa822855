"""Transfer learning: frozen parameters, lr multipliers, runtime hyperparameters."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from arcface_jax import models, optim, parallel, seeding, trainer
from arcface_jax.config_files import load_config
from arcface_jax.train_state import create_train_state
from arcface_jax.train_step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


@pytest.fixture
def tiny_config(tmp_path_factory):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  return config


def _leaves_by_path(tree):
  return {
    optim.path_string(p): np.asarray(x)
    for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  }


def _steps(config, num_steps=2, seed=0):
  """A real train step of the trainer's model, optimizer and freezing, on random batches."""
  from arcface_jax import freezing, losses

  model = models.from_config(config)
  objective = losses.build_objective(
    config.loss, num_classes=10, embedding_dim=config.model.embedding_dim
  )
  tx = optim.make_optimizer(config.train)
  state0 = create_train_state(seeding.keys(0), model, objective, tx, config.data.image_size)
  step_model = freezing.for_training(model, config.train, state0.params, state0.batch_stats)
  step = jax.jit(
    make_train_step(
      step_model, objective, tx, optim.make_schedule(config.train), jax.random.PRNGKey(1)
    )
  )
  rng = np.random.default_rng(seed)
  state = state0
  size = config.data.image_size
  for _ in range(num_steps):
    batch = {
      'image': jnp.asarray(rng.normal(size=(16, size, size, 3)), jnp.float32),
      'label': jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    state, _ = step(state, batch)
  return state0, state


def test_frozen_parameters_keep_no_state_and_stay_bit_identical(tiny_config):
  tiny_config.train.freeze = ('^backbone/IBasicBlock_[01]/', 'PReLU_0/slope$')
  before, after = _steps(tiny_config)
  frozen = optim.frozen_paths(tiny_config.train, before.params)
  assert any(p.startswith('backbone/IBasicBlock_0/') for p in frozen)
  assert 'backbone/PReLU_0/slope' in frozen and 'backbone/IBasicBlock_2/Conv_0/kernel' not in frozen
  old, new = _leaves_by_path(before.params), _leaves_by_path(after.params)
  for path in old:
    if path in frozen:
      assert old[path].tobytes() == new[path].tobytes(), path
    elif 'IBasicBlock_2' in path and path.endswith('kernel'):
      assert not np.array_equal(old[path], new[path]), path
  # No optimizer state for a frozen parameter: every array in the state that has a parameter's
  # shape belongs to a trained parameter (momentum traces), and their count equals theirs.
  shapes = {path: old[path].shape for path in old}
  trained = [p for p in old if p not in frozen]
  traces = [
    path
    for path, leaf in _leaves_by_path(after.opt_state.inner_state).items()
    if '/trace/' in f'/{path}/'
  ]
  assert len(traces) == len(trained)
  for path in traces:
    param = path.split('/trace/', 1)[1]
    assert (
      param in trained and shapes[param] == _leaves_by_path(after.opt_state.inner_state)[path].shape
    )


@pytest.mark.parametrize('freeze_stats', [False, True])
def test_freeze_batch_stats_keeps_frozen_layers_statistics(tiny_config, freeze_stats):
  tiny_config.train.freeze = ('^backbone/IBasicBlock_0/',)
  tiny_config.train.freeze_batch_stats = freeze_stats
  before, after = _steps(tiny_config)
  old, new = _leaves_by_path(before.batch_stats), _leaves_by_path(after.batch_stats)
  frozen_block = [p for p in old if p.startswith('IBasicBlock_0/')]
  assert frozen_block
  for path in frozen_block:
    assert (old[path].tobytes() == new[path].tobytes()) == freeze_stats, path
  assert not np.array_equal(
    old['IBasicBlock_1/BatchNorm_0/mean'], new['IBasicBlock_1/BatchNorm_0/mean']
  )


def test_lr_multiplier_scales_the_update(tiny_config):
  train = tiny_config.train
  train.update(momentum=0.0, weight_decay=0.0, clip_grad_norm=0.0, schedule='step')
  params = {'backbone': {'a': jnp.ones(3), 'b': jnp.ones(2)}, 'head': {'weight': jnp.ones(4)}}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  train.lr_multipliers = ('^head/=10', 'backbone/b=0.25')
  tx = optim.make_optimizer(train)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = train.learning_rate
  np.testing.assert_allclose(updates['backbone']['a'], -lr * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates['backbone']['b'], -lr * 0.25 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['weight'], -lr * 10 * 0.5, rtol=1e-6)


@pytest.mark.parametrize(
  'key,value,message',
  [
    ('freeze', ('^backbone/NoSuchLayer',), "'\\^backbone/NoSuchLayer' matches no parameter"),
    ('freeze', ('([',), 'not a valid regular expression'),
    ('lr_multipliers', ('^head/',), 'is not REGEX=FACTOR'),
    ('lr_multipliers', ('^nothing/=2',), "'\\^nothing/' matches no parameter not frozen"),
  ],
)
def test_bad_patterns_are_one_config_error(tiny_config, tmp_path, key, value, message):
  tiny_config.train[key] = value
  with pytest.raises(trainer.ConfigError, match=f'config.train.{key}: .*{message}'):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / 'run'), mesh=parallel.make_mesh(1))


def test_hyperparameters_are_runtime_values_not_constants(tiny_config):
  """Runs differing in learning rate, momentum or weight decay compile the same program."""
  from arcface_jax import losses

  model = models.from_config(tiny_config)
  objective = losses.build_objective(
    tiny_config.loss, num_classes=10, embedding_dim=tiny_config.model.embedding_dim
  )
  size = tiny_config.data.image_size
  batch = {
    'image': jax.ShapeDtypeStruct((16, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((16,), jnp.int32),
  }

  def lowered(lr, momentum, wd):
    train = ml_collections.ConfigDict(tiny_config.train.to_dict())
    train.update(learning_rate=lr, momentum=momentum, weight_decay=wd)
    tx = optim.make_optimizer(train)
    state = jax.eval_shape(
      lambda r: create_train_state(r, model, objective, tx, size), seeding.keys(0)
    )
    step = make_train_step(model, objective, tx, optim.make_schedule(train), jax.random.PRNGKey(1))
    return jax.jit(step).lower(state, batch).as_text(debug_info=False)

  assert lowered(0.1, 0.9, 5e-4) == lowered(0.003, 0.5, 0.0)


def test_runtime_hyperparameters_match_torch_sgd(tiny_config):
  train = tiny_config.train
  train.update(
    learning_rate=0.05,
    momentum=0.8,
    weight_decay=0.01,
    clip_grad_norm=0.0,
    schedule='step',
    lr_boundaries=(2,),
    lr_decay_factor=0.1,
  )
  tx = optim.make_optimizer(train)
  p = np.array([1.0, -2.0])
  params = {'backbone': {'w': jnp.asarray(p, jnp.float32)}, 'head': {}}
  state = tx.init(params)
  buf = np.zeros(2)
  for step, g in enumerate([np.array([0.3, 0.1]), np.array([-0.2, 0.4]), np.array([0.5, 0.5])]):
    assert np.isclose(float(optim.applied_learning_rate(state)), 0.05 * (0.1 if step >= 2 else 1))
    updates, state = tx.update(
      {'backbone': {'w': jnp.asarray(g, jnp.float32)}, 'head': {}}, state, params
    )
    params = optax.apply_updates(params, updates)
    # torch.optim.SGD in float64: d = g + wd p; buf = m buf + d; p -= lr buf.
    lr = 0.05 * (0.1 if step >= 2 else 1.0)
    buf = 0.8 * buf + (g + 0.01 * p)
    p = p - lr * buf
    np.testing.assert_allclose(params['backbone']['w'], p, rtol=1e-6)
  changed = ml_collections.ConfigDict(train.to_dict())
  changed.learning_rate = 0.5
  moved = optim.set_hyperparams(state, changed)
  assert np.isclose(float(moved.hyperparams['learning_rate']), 0.5)
  assert np.isclose(float(optim.applied_learning_rate(moved)), 0.05)  # 0.5 × 0.1 after step 2
