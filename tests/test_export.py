"""StableHLO export: the reloaded artifact embeds like the model, in a process without arcface_jax."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from arcface_jax import export, models


def _trained_like_variables(model, images):
  variables = model.init(jax.random.PRNGKey(0), images)
  # One training-mode pass so the running statistics are not the init's zeros and ones.
  _, state = model.apply(variables, images, train=True, mutable=['batch_stats'])
  return {'params': variables['params'], 'batch_stats': state['batch_stats']}


def test_export_reloads_without_this_package_and_matches(tmp_path):
  model = models.get('iresnet_tiny', embedding_dim=8)
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
  variables = _trained_like_variables(model, images)
  expected = np.asarray(model.apply(variables, images))
  path = str(tmp_path / 'backbone.jax_export')
  assert export.save(path, model, variables, 32, platforms=('cpu',)) > 0
  # Same process: any batch size (the batch dimension is symbolic).
  embed = export.load(path)
  np.testing.assert_allclose(embed(images), expected, rtol=1e-5, atol=1e-5)
  assert embed(images[:1]).shape == (1, 8)
  # A fresh interpreter that cannot import arcface_jax: the artifact needs JAX alone.
  np.save(tmp_path / 'images.npy', np.asarray(images))
  script = textwrap.dedent(f"""
      import sys
      sys.path = [p for p in sys.path if p not in ('', {os.getcwd()!r})]
      sys.modules['arcface_jax'] = None  # any import of it now fails, even when installed
      import jax, numpy as np
      with open({path!r}, 'rb') as f:
        embed = jax.export.deserialize(bytearray(f.read())).call
      np.save({str(tmp_path / 'out.npy')!r}, np.asarray(embed(np.load({str(tmp_path / 'images.npy')!r}))))
  """)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  subprocess.run([sys.executable, '-c', script], check=True, cwd=tmp_path, env=env)
  np.testing.assert_allclose(np.load(tmp_path / 'out.npy'), expected, rtol=1e-5, atol=1e-5)


def test_exported_model_is_in_eval_mode_with_fp32_output(tmp_path):
  model = models.get('iresnet_tiny', embedding_dim=8, dtype='bfloat16', dropout=0.5)
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3))
  variables = _trained_like_variables(models.get('iresnet_tiny', embedding_dim=8), images)
  exported = export.export_embedder(model, variables, 16, platforms=('cpu',))
  out = exported.call(images)
  assert out.dtype == jnp.float32
  # Deterministic (no dropout) and the eval-mode forward to bf16 precision: with the weights
  # baked in as constants XLA folds and fuses differently, so bf16 roundings differ.
  np.testing.assert_array_equal(out, exported.call(images))
  expected = np.asarray(model.apply(variables, images))
  assert np.max(np.abs(out - expected)) < 0.03 * np.max(np.abs(expected))
  train_mode = model.apply(
    variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)}
  )[0]
  assert np.max(np.abs(out - train_mode)) > 0.1 * np.max(np.abs(expected))
