"""The model-parallel margin softmax against a float64 NumPy reference, on 8 virtual devices.

The reference computes the margin softmax of one device by hand in float64 (forward and analytic
backward through the margin curve and both normalisations); the sharded version must match it in
loss and in the gradients w.r.t. centres and embeddings, for every margin, for class counts that
do not divide by the device count, and chunked as well as unchunked.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import margins, parallel
from arcface_jax.config_files import load_base
from arcface_jax.parallel import chunked, softmax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MARGINS = {
  'norm_softmax': dict(name='norm_softmax', s=30.0),
  'cosface': dict(name='cosface'),
  'arcface': dict(name='arcface'),
  'arcface_easy': dict(name='arcface', easy_margin=True),
  'arcface_straight_through': dict(name='arcface', straight_through=True),
  'combined_cm1': dict(name='combined'),
  'combined_cm2': dict(name='combined', m1=0.9, m2=0.4, m3=0.15),
  'sphereface_1.35': dict(name='combined', m1=1.35, m2=0.0, m3=0.0),
}


def _margin(spec):
  spec = dict(spec)
  return margins.get(spec.pop('name'), **spec)


def _np_target(c, mg):
  """(value, d value / d cos) of the unscaled target curve, float64, from REFERENCE §1."""
  m1, m2, m3 = mg.m1, mg.m2, mg.m3
  theta = np.arccos(np.clip(c, -1, 1))
  value = np.cos(m1 * theta + m2)
  slope = m1 * np.sin(m1 * theta + m2) / np.sin(theta)
  theta0 = (math.pi - m2) / m1
  if mg.easy_margin:
    value, slope = np.where(c > 0, value, c), np.where(c > 0, slope, 1.0)
  elif theta0 < math.pi:
    drop = m2 * math.sin(m2) if m1 == 1.0 else math.cos(theta0) + 1.0
    below = c <= math.cos(theta0)
    value, slope = np.where(below, c - drop, value), np.where(below, 1.0, slope)
  if mg.straight_through:
    slope = np.ones_like(c)
  return value - m3, slope


def reference(w, x, y, mg):
  """(loss, d loss/d w, d loss/d x) of the single-device margin softmax in float64."""
  w, x = w.astype(np.float64), x.astype(np.float64)
  b = x.shape[0]
  wn_norm = np.linalg.norm(w, axis=1, keepdims=True)
  xn_norm = np.linalg.norm(x, axis=1, keepdims=True)
  wn, xn = w / wn_norm, x / xn_norm
  cos = xn @ wn.T
  rows = np.arange(b)
  target, slope = _np_target(cos[rows, y], mg)
  logits = mg.scale * cos
  logits[rows, y] = mg.scale * target
  shift = logits.max(axis=1, keepdims=True)
  p = np.exp(logits - shift)
  p /= p.sum(axis=1, keepdims=True)
  loss = np.mean(np.log(np.exp(logits - shift).sum(axis=1)) + shift[:, 0] - logits[rows, y])
  d_logits = p.copy()
  d_logits[rows, y] -= 1.0
  d_logits /= b
  d_cos = mg.scale * d_logits
  d_cos[rows, y] *= slope
  d_xn, d_wn = d_cos @ wn, d_cos.T @ xn
  # d (v/|v|) = (I − v̂v̂ᵀ)/|v|
  d_x = (d_xn - xn * np.sum(d_xn * xn, axis=1, keepdims=True)) / xn_norm
  d_w = (d_wn - wn * np.sum(d_wn * wn, axis=1, keepdims=True)) / wn_norm
  return loss, d_w, d_x


def problem(num_classes, batch=16, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(num_classes, dim)).astype(np.float32)
  x = rng.normal(size=(batch, dim)).astype(np.float32)
  y = rng.integers(0, num_classes, batch).astype(np.int32)
  # Two rows far past ArcFace's θ + m = π, where the monotone fallback takes over.
  x[0] = -w[y[0]] + 0.05 * rng.normal(size=dim)
  x[1] = -w[y[1]] + 0.05 * rng.normal(size=dim)
  return w, x, y


def sharded_value_and_grad(w, x, y, mg, mesh, **kw):
  fn = lambda w, x: parallel.margin_softmax_loss(w, x, jnp.asarray(y), margin=mg, mesh=mesh, **kw)
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(jnp.asarray(w), jnp.asarray(x))


def assert_close(actual, expected, tol=1e-5):
  """Relative to the largest reference entry (float32 on the device, float64 reference)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = max(np.abs(expected).max(), 1e-30)
  assert np.abs(actual - expected).max() / scale <= tol, (actual, expected)


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh(8)


@pytest.mark.parametrize('name', sorted(MARGINS))
def test_every_margin_matches_float64_reference_with_uneven_classes(name, mesh):
  mg = _margin(MARGINS[name])
  w, x, y = problem(num_classes=13)  # 13 classes over 8 devices: padded to 16, 3 rows masked
  loss, (d_w, d_x) = sharded_value_and_grad(w, x, y, mg, mesh)
  ref_loss, ref_w, ref_x = reference(w, x, y, mg)
  assert_close(loss, ref_loss)
  assert d_w.shape == w.shape
  assert_close(d_w, ref_w)
  assert_close(d_x, ref_x)


@pytest.mark.parametrize('num_classes', [3, 16, 45])
def test_devices_without_classes_and_even_split(num_classes, mesh):
  """3 classes leave 5 devices with padding only (their log-sum-exp is −inf); 16 splits evenly."""
  mg = margins.get('arcface')
  w, x, y = problem(num_classes=num_classes, seed=1)
  loss, (d_w, d_x) = sharded_value_and_grad(w, x, y, mg, mesh)
  ref_loss, ref_w, ref_x = reference(w, x, y, mg)
  assert_close(loss, ref_loss)
  assert_close(d_w, ref_w)
  assert_close(d_x, ref_x)


@pytest.mark.parametrize('chunk', [1, 4])
def test_chunked_equals_unchunked(chunk, mesh):
  """45 classes → 6 per device: chunks of 4 end with a shifted block overlapping the first."""
  mg = margins.get('combined', m1=0.9, m2=0.4, m3=0.15)
  w, x, y = problem(num_classes=45, seed=2)
  loss, (d_w, d_x) = sharded_value_and_grad(w, x, y, mg, mesh, chunk=chunk)
  dense_loss, (dense_w, dense_x) = sharded_value_and_grad(w, x, y, mg, mesh)
  assert_close(loss, dense_loss, 1e-6)
  assert_close(d_w, dense_w, 1e-6)
  assert_close(d_x, dense_x, 1e-6)
  ref_loss, ref_w, _ = reference(w, x, y, mg)
  assert_close(loss, ref_loss)
  assert_close(d_w, ref_w)


def test_chunked_kernel_never_builds_the_full_logit_matrix():
  """The compiled chunked step holds (B, chunk) blocks, not a (B, C_local) logit matrix."""
  mg = margins.get('arcface')
  b, d, c, chunk = 8, 4, 4096, 64
  x = jnp.ones((b, d)) / 2.0
  w = jax.random.normal(jax.random.key(0), (c, d))
  labels = jnp.arange(b)
  valid = jnp.ones((c,), bool)

  def loss(fn):
    return lambda w, x: jnp.sum(fn(x, w, labels, valid)[0])

  chunked_fn = loss(lambda *a: chunked.chunked_local_stats(*a, margin=mg, chunk=chunk))
  dense_fn = loss(lambda *a: chunked.local_stats(*a, margin=mg))
  temp = lambda f: (
    jax.jit(jax.grad(f, argnums=(0, 1))).lower(w, x).compile().memory_analysis().temp_size_in_bytes
  )
  # A single (B, C) float32 matrix is 128 KiB; the chunked backward needs w's gradient (64 KiB)
  # and blocks, the dense one several (B, C) matrices.
  assert temp(chunked_fn) < b * c * 4
  assert temp(dense_fn) > 2 * b * c * 4


def test_loss_matches_single_device_objective(mesh):
  """The sharded loss equals losses.build_objective's on the same centres (the trainer's head)."""
  from arcface_jax import losses

  config = load_base(os.path.join(REPO, 'configs', 'base.py')).loss
  config.name = 'cosface'
  w, x, y = problem(num_classes=13, seed=3)
  objective = losses.build_objective(config, num_classes=13, embedding_dim=8)
  single, _, _ = objective({'weight': jnp.asarray(w)}, {}, jnp.asarray(x), jnp.asarray(y), 0)
  sharded = jax.jit(
    lambda w, x: parallel.margin_softmax_loss(
      w, x, jnp.asarray(y), margin=objective.margin, mesh=mesh
    )
  )(jnp.asarray(w), jnp.asarray(x))
  np.testing.assert_allclose(sharded, single, rtol=1e-5)


def test_sphereface_is_refused_with_a_clear_error(mesh):
  w, x, y = problem(num_classes=8)
  with pytest.raises(ValueError, match='SphereFace.*model_parallel=False'):
    parallel.margin_softmax_loss(
      jnp.asarray(w), jnp.asarray(x), jnp.asarray(y), margin=margins.get('sphereface'), mesh=mesh
    )


def test_batch_must_split_over_devices(mesh):
  w, x, y = problem(num_classes=8, batch=12)
  with pytest.raises(ValueError, match='global batch 12'):
    parallel.margin_softmax_loss(
      jnp.asarray(w), jnp.asarray(x), jnp.asarray(y), margin=margins.get('arcface'), mesh=mesh
    )


def test_embedding_gradient_is_reduce_scattered(mesh):
  """The transpose of the embeddings' all-gather is a reduce-scatter back to their devices."""
  w, x, y = problem(num_classes=16)
  fn = lambda w, x: (
    softmax.margin_softmax(w, x, jnp.asarray(y), margin=margins.get('arcface'), mesh=mesh).loss
  )
  jaxpr = str(jax.make_jaxpr(jax.grad(fn, argnums=1))(jnp.asarray(w), jnp.asarray(x)))
  assert 'reduce_scatter' in jaxpr or 'psum_scatter' in jaxpr
