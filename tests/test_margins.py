"""Margins against float64 closed forms written here; finite differences; finite at cos = ±1."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arcface_jax import losses, margins


def ref_combined(cos, m1=1.0, m2=0.0, m3=0.0, easy_margin=False):
  """float64 cos(m1·θ + m2) − m3 with the documented monotone continuation past θ0."""
  cos = np.clip(np.asarray(cos, np.float64), -1, 1)
  theta = np.arccos(cos)
  value = np.cos(m1 * theta + m2)
  if easy_margin:
    return np.where(cos > 0, value, cos) - m3
  limit = (np.pi - m2) / m1
  drop = m2 * np.sin(m2) if m1 == 1 else np.cos(limit) + 1.0
  return np.where(theta < limit, value, cos - drop) - m3


def ref_psi(cos, m=4, lam=0.0):
  """float64 A-softmax: (λ cos θ + (−1)^k cos(mθ) − 2k) / (1 + λ), k = ⌊mθ/π⌋ (≤ m − 1)."""
  theta = np.arccos(np.clip(cos, -1, 1))
  k = np.minimum(np.floor(m * theta / np.pi), m - 1)
  psi = (-1.0) ** k * np.cos(m * theta) - 2 * k
  return (lam * cos + psi) / (1 + lam)


CASES = [
  ('norm_softmax', {}, {}),
  ('cosface', {'m': 0.35}, {'m3': 0.35}),
  ('arcface', {'m': 0.5}, {'m2': 0.5}),
  ('arcface', {'m': 0.5, 'easy_margin': True}, {'m2': 0.5, 'easy_margin': True}),
  ('combined', {'m1': 1.0, 'm2': 0.3, 'm3': 0.2}, {'m2': 0.3, 'm3': 0.2}),
  ('combined', {'m1': 0.9, 'm2': 0.4, 'm3': 0.15}, {'m1': 0.9, 'm2': 0.4, 'm3': 0.15}),
  ('combined', {'m1': 1.35, 'm2': 0.0, 'm3': 0.0}, {'m1': 1.35}),
]
IDS = ['ns', 'cosface', 'arcface', 'arcface_easy', 'cm1', 'cm2', 'sphere1.35']


def _reference(name, params, ref_params, cos):
  if name == 'sphereface':
    return ref_psi(cos, **ref_params)
  return ref_combined(cos, **ref_params)


@pytest.mark.parametrize('name,params,ref', CASES, ids=IDS)
def test_target_logit_matches_closed_form(name, params, ref):
  theta = np.linspace(0, np.pi, 1441)
  got = np.asarray(margins.get(name, **params).target_logit(jnp.asarray(theta, jnp.float32)))
  want = ref_combined(np.cos(theta), **ref)
  # Compare away from the jumps (fallback at θ0, easy margin at π/2), where float32 rounding of θ
  # can land on either side.
  jump = np.pi / 2 if ref.get('easy_margin') else (np.pi - ref.get('m2', 0.0)) / ref.get('m1', 1.0)
  away = np.abs(theta - jump) > 1e-3
  np.testing.assert_allclose(got[away], want[away], atol=2e-5)


def test_paper_defaults():
  assert margins.get('arcface') == margins.CombinedMargin(64.0, 1.0, 0.5, 0.0)
  assert margins.get('cosface') == margins.CombinedMargin(64.0, 1.0, 0.0, 0.35)
  assert margins.get('combined') == margins.CombinedMargin(64.0, 1.0, 0.3, 0.2)
  assert margins.get('norm_softmax').scale == 64.0
  sphere = margins.get('sphereface')
  assert isinstance(sphere, margins.SphereFaceMargin) and sphere.m == 4


@pytest.mark.parametrize('lam', [0.0, 5.0])
def test_sphereface_psi_matches_closed_form(lam):
  theta = np.linspace(0, np.pi, 1441)
  got = np.asarray(margins.get('sphereface').target_logit(jnp.asarray(theta, jnp.float32), lam))
  np.testing.assert_allclose(got, ref_psi(np.cos(theta), 4, lam), atol=5e-5)
  assert got[0] == pytest.approx(1.0, abs=1e-6) and got[-1] == pytest.approx(
    (-lam - 7) / (1 + lam), abs=1e-4
  )


MONOTONE = [c for c in CASES[1:] if not c[1].get('easy_margin')] + [('sphereface', {}, {})]


@pytest.mark.parametrize('name,params,ref', MONOTONE, ids=[c[0] + str(c[2]) for c in MONOTONE])
def test_target_curve_is_monotone_and_below_cos(name, params, ref):
  # (easy_margin is excluded by design: it jumps back up to cos θ at θ = π/2.)
  theta = jnp.linspace(0.0, jnp.pi, 4001)
  curve = np.asarray(margins.get(name, **params).target_logit(theta), np.float64)
  assert np.all(np.diff(curve) <= 1e-6), 'a larger angle must never raise the target logit'
  assert np.all(curve <= np.cos(np.asarray(theta, np.float64)) + 1e-6)


def test_fallback_is_continuous_when_m1_is_not_one():
  mg = margins.get('combined', m1=0.9, m2=0.4, m3=0.15)
  theta0 = mg.fallback_theta
  assert theta0 < math.pi
  left, right = mg.target_logit(jnp.array([theta0 - 1e-4, theta0 + 1e-4]))
  assert abs(float(left) - float(right)) < 1e-3


def _cos_matrix(seed=0, shape=(6, 9)):
  rng = np.random.default_rng(seed)
  cos = rng.uniform(-1, 1, shape)
  cos[0, 2], cos[1, 4], cos[4, 0] = 1.0, -1.0, -1.0
  return cos, np.array([2, 4, 0, -1, 8, 3])


def _ref_ce(logits, labels):
  valid = labels >= 0
  z = logits[valid]
  shifted = z - z.max(1, keepdims=True)
  return np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(valid.sum()), labels[valid]])


@pytest.mark.parametrize('name,params,ref', CASES, ids=IDS)
def test_logits_and_cross_entropy_match_float64_reference(name, params, ref):
  cos, labels = _cos_matrix()
  mg = margins.get(name, s=64.0, **params)
  got = np.asarray(mg(jnp.asarray(cos, jnp.float32), jnp.asarray(labels)), np.float64)
  want = 64.0 * cos
  rows = labels >= 0
  want[rows, labels[rows]] = 64.0 * ref_combined(cos[rows, labels[rows]], **ref)
  np.testing.assert_allclose(got, want, atol=64 * 3e-6)
  # The −1 row is only scaled: bit-identical to s·cos in float32.
  np.testing.assert_array_equal(got[3], np.float32(64.0) * cos[3].astype(np.float32))
  ce = losses.margin_softmax_cross_entropy(jnp.asarray(got, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(float(ce), _ref_ce(want, labels), rtol=1e-5)


def test_sphereface_logits_use_feature_norms_and_lambda():
  cos, labels = _cos_matrix(1)
  norms = np.linspace(0.5, 3.0, 6)
  mg = margins.get('sphereface')
  got = np.asarray(
    mg(
      jnp.asarray(cos, jnp.float32),
      jnp.asarray(labels),
      norms=jnp.asarray(norms, jnp.float32),
      lam=7.0,
    )
  )
  want = cos.copy()
  rows = labels >= 0
  want[rows, labels[rows]] = ref_psi(cos[rows, labels[rows]], 4, 7.0)
  np.testing.assert_allclose(got, norms[:, None] * want, atol=2e-5)


def test_sphereface_lambda_schedule():
  mg = margins.get(
    'sphereface', lambda_base=1000.0, lambda_gamma=0.12, lambda_power=1.0, lambda_min=5.0
  )
  for step in (0, 10, 1000, 100_000):
    want = max(5.0, 1000.0 * (1 + 0.12 * step) ** -1.0)
    assert float(mg.lambda_at(jnp.int32(step))) == pytest.approx(want, rel=1e-5)


GRAD_CASES = CASES + [('arcface', {'m': 0.5, 'straight_through': True}, {})]
GRAD_IDS = IDS + ['arcface_st']


def _fd_grad(f, x, eps=1e-6):
  grad = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += eps
    down[idx] -= eps
    grad[idx] = (float(f(jnp.asarray(up))) - float(f(jnp.asarray(down)))) / (2 * eps)
  return grad


@pytest.mark.parametrize(
  'name,params,ref', CASES + [('sphereface', {}, {})], ids=IDS + ['sphereface']
)
def test_gradient_matches_finite_differences_in_float64(name, params, ref):
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    cos = rng.uniform(-0.95, 0.95, (3, 5))
    labels = jnp.array([1, 0, 4])
    mg = margins.get(name, s=4.0, **params)
    kwargs = {'norms': jnp.array([1.5, 2.0, 0.7]), 'lam': 3.0} if name == 'sphereface' else {}
    f = jax.jit(lambda c: losses.margin_softmax_cross_entropy(mg(c, labels, **kwargs), labels))
    grad = np.asarray(jax.grad(f)(jnp.asarray(cos)))
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, _fd_grad(f, cos), rtol=1e-6, atol=1e-8)


def test_straight_through_changes_the_value_not_the_gradient():
  labels = jnp.array([0, 1])
  cos = jnp.array([[0.5, 0.1], [0.2, -0.3]])
  true = margins.get('arcface', m=0.5)
  st = margins.get('arcface', m=0.5, straight_through=True)
  np.testing.assert_allclose(true(cos, labels), st(cos, labels), rtol=1e-6)
  plain = margins.get('norm_softmax')
  g = lambda mg: jax.grad(lambda c: jnp.sum(mg(c, labels) * jnp.arange(4.0).reshape(2, 2)))(cos)
  np.testing.assert_allclose(g(st), g(plain), rtol=1e-6)
  assert not np.allclose(g(true), g(plain))


EDGE = [
  [1.0, -1.0, 0.0],
  [-1.0, 1.0, 0.999999],
  [0.0, 1.0, -1.0],
  [-1.0, -1.0, -1.0],
  [1.0, 1.0, 1.0],
]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16], ids=['f32', 'bf16'])
@pytest.mark.parametrize(
  'name,params,ref', GRAD_CASES + [('sphereface', {}, {})], ids=GRAD_IDS + ['sphereface']
)
def test_value_and_gradient_finite_at_the_edges(name, params, ref, dtype):
  mg = margins.get(name, **params)
  cos = jnp.array(EDGE, dtype)
  labels = jnp.array([0, 0, 2, 1, -1])

  def loss(c):
    return losses.margin_softmax_cross_entropy(mg(c, labels), labels)

  value, grad = jax.value_and_grad(loss)(cos)
  assert mg(cos, labels).dtype == jnp.float32
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))
  # The margin curve itself is finite with a finite slope at both ends.
  ends = jnp.array([-1.0, 1.0], dtype)
  slope = jax.vmap(jax.grad(mg.target_cos))(ends.astype(jnp.float32))
  assert np.all(np.isfinite(np.asarray(slope)))


def test_unknown_and_softmax_names_are_clear_errors():
  with pytest.raises(ValueError, match="'arcfce'.*arcface"):
    margins.get('arcfce')
  with pytest.raises(ValueError, match='head option'):
    margins.get('softmax')
  with pytest.raises(ValueError, match='combined with m1=1.35'):
    margins.get('sphereface', m=1.35)


def _loss_config(**overrides):
  config = ml_collections.ConfigDict(
    dict(
      name='arcface',
      s=None,
      m=None,
      m1=None,
      m2=None,
      m3=None,
      easy_margin=False,
      straight_through=False,
      sphereface_lambda_base=1000.0,
      sphereface_lambda_gamma=0.12,
      sphereface_lambda_power=1.0,
      sphereface_lambda_min=5.0,
    )
  )
  config.update(overrides)
  return config


def test_from_config_resolves_placeholders_to_paper_defaults():
  assert margins.from_config(_loss_config()) == margins.get('arcface', s=64.0, m=0.5)
  assert margins.from_config(_loss_config(name='cosface', m=0.4)).m3 == 0.4
  cm2 = margins.from_config(_loss_config(name='combined', m1=0.9, m2=0.4, m3=0.15, s=32.0))
  assert (cm2.m1, cm2.m2, cm2.m3, cm2.scale) == (0.9, 0.4, 0.15, 32.0)
  st = margins.from_config(_loss_config(straight_through=True, easy_margin=True))
  assert st.straight_through and st.easy_margin
  sphere = margins.from_config(_loss_config(name='sphereface', m=3.0, sphereface_lambda_min=0.0))
  assert sphere.m == 3 and sphere.lambda_min == 0.0
