"""Learning-rate schedules and the optimizer against hand-computed values."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from arcface_jax import optim


def _train_config(**overrides):
  c = ml_collections.ConfigDict(
    dict(
      learning_rate=0.1,
      schedule='step',
      lr_boundaries=(100, 160),
      lr_decay_factor=0.1,
      warmup_steps=0,
      poly_power=1.0,
      num_steps=180,
      momentum=0.9,
      weight_decay=5e-4,
      clip_grad_norm=5.0,
      freeze=(),
      lr_multipliers=(),
      freeze_batch_stats=False,
    )
  )
  c.update(overrides)
  return c


def test_step_schedule_divides_by_ten_at_the_boundaries():
  schedule = optim.make_schedule(_train_config())
  got = [float(schedule(s)) for s in (0, 99, 100, 159, 160, 179)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_warmup_then_linear_decay_to_zero():
  schedule = optim.make_schedule(
    _train_config(schedule='warmup_poly', warmup_steps=20, num_steps=120)
  )
  got = [float(schedule(s)) for s in (0, 10, 20, 70, 120)]
  np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)


def test_unknown_schedule_names_the_value():
  with pytest.raises(ValueError, match="'cosine'"):
    optim.make_schedule(_train_config(schedule='cosine'))


def test_clip_applies_to_backbone_only_and_decay_is_coupled():
  config = _train_config(momentum=0.0)
  tx = optim.make_optimizer(config)
  params = {'backbone': {'w': jnp.full((4,), 2.0)}, 'head': {'weight': jnp.full((4,), 3.0)}}
  grads = {'backbone': {'w': jnp.full((4,), 100.0)}, 'head': {'weight': jnp.full((4,), 100.0)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # backbone: gradient norm 200 clipped to 5 → each entry 2.5; then + wd * p; times -lr.
  np.testing.assert_allclose(updates['backbone']['w'], -0.1 * (2.5 + 5e-4 * 2.0), rtol=1e-6)
  np.testing.assert_allclose(updates['head']['weight'], -0.1 * (100.0 + 5e-4 * 3.0), rtol=1e-6)


def test_momentum_accumulates_like_torch_sgd():
  config = _train_config(weight_decay=0.0, clip_grad_norm=0.0)
  tx = optim.make_optimizer(config)
  params = {'backbone': {'w': jnp.zeros(2)}, 'head': {'weight': jnp.zeros(2)}}
  grads = _tree_full(params, 1.0)
  state = tx.init(params)
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  # torch: buf1 = g; buf2 = 0.9 * buf1 + g = 1.9 g; update = -lr * buf.
  np.testing.assert_allclose(first['head']['weight'], -0.1, rtol=1e-6)
  np.testing.assert_allclose(second['head']['weight'], -0.19, rtol=1e-6)


def _tree_full(tree, value):
  return optax.tree_utils.tree_full_like(tree, value)
