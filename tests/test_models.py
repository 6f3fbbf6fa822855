"""Backbones: published sizes, train/eval modes, bf16 trunk against fp32, registry errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import models

PUBLISHED_MILLIONS = {'iresnet18': 24.0, 'iresnet34': 34.1, 'iresnet50': 43.6,
                      'iresnet100': 65.2, 'iresnet200': 118.8}


@pytest.mark.parametrize('name', sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_within_one_percent_of_published(name):
  model = models.get(name)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes['params'])) / 1e6
  assert abs(count - PUBLISHED_MILLIONS[name]) / PUBLISHED_MILLIONS[name] < 0.01


def _tiny_and_variables(dtype='float32'):
  model = models.get('iresnet_tiny', embedding_dim=16, dtype=dtype)
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  variables = models.get('iresnet_tiny', embedding_dim=16).init(jax.random.PRNGKey(0), images)
  return model, variables, images


def test_train_mode_updates_batch_stats_and_eval_mode_does_not_need_them_mutable():
  model, variables, images = _tiny_and_variables()
  embeddings, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  assert embeddings.shape == (4, 16) and embeddings.dtype == jnp.float32
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), updates['batch_stats'],
                         variables['batch_stats'])
  assert any(jax.tree.leaves(changed))
  assert model.apply(variables, images, train=False).shape == (4, 16)


def test_bf16_trunk_agrees_with_fp32_to_bf16_precision():
  fp32, variables, images = _tiny_and_variables()
  bf16 = models.get('iresnet_tiny', embedding_dim=16, dtype='bfloat16')
  a = np.asarray(fp32.apply(variables, images))
  b = bf16.apply(variables, images)
  assert b.dtype == jnp.float32  # the embedding head stays fp32
  cosine = np.sum(a * np.asarray(b), 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  assert np.all(cosine > 0.99)
  assert np.max(np.abs(a - np.asarray(b))) / np.max(np.abs(a)) < 0.05


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="'iresnet51'.*iresnet50"):
    models.get('iresnet51')
