"""Margins against closed forms and a float64 NumPy reference; finite at cos = ±1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import losses, margins


def reference_target(name, cos, **p):
  """float64 closed forms of REFERENCE §1, with the monotone fallback past θ + m > π."""
  theta = np.arccos(np.clip(cos, -1, 1))
  if name == 'norm_softmax':
    return cos
  if name == 'cosface':
    return cos - p['m']
  if name == 'arcface':
    m = p['m']
    return np.where(theta + m < np.pi, np.cos(theta + m), cos - m * np.sin(m))
  m1, m2, m3 = p['m1'], p['m2'], p['m3']
  limit = (np.pi - m2) / m1
  # m1 = 1: the paper-era ArcFace fallback; otherwise the drop that keeps the curve continuous.
  drop = m2 * np.sin(m2) if m1 == 1 else np.cos(limit) - np.cos(m1 * limit + m2)
  return np.where(theta < limit, np.cos(m1 * theta + m2), cos - drop) - m3


CASES = [('norm_softmax', {}), ('cosface', {'m': 0.35}), ('arcface', {'m': 0.5}),
         ('combined', {'m1': 1.0, 'm2': 0.3, 'm3': 0.2}),
         ('combined', {'m1': 0.9, 'm2': 0.4, 'm3': 0.15})]


@pytest.mark.parametrize('name,params', CASES)
def test_target_logit_matches_closed_form(name, params):
  theta = np.linspace(0, np.pi, 721)
  mg = margins.get(name, **params)
  got = np.asarray(mg.target_logit(jnp.asarray(theta, jnp.float32)))
  np.testing.assert_allclose(got, reference_target(name, np.cos(theta), **params), atol=2e-3)


def test_arcface_curve_is_cos_theta_plus_m_away_from_the_fallback():
  theta = np.linspace(0.05, np.pi - 0.6, 50)
  got = np.asarray(margins.get('arcface', m=0.5).target_logit(jnp.asarray(theta, jnp.float32)))
  np.testing.assert_allclose(got, np.cos(theta + 0.5), atol=1e-5)


@pytest.mark.parametrize('name,params', CASES)
def test_logits_and_cross_entropy_match_float64_reference(name, params):
  rng = np.random.default_rng(0)
  cos = np.clip(rng.uniform(-1, 1, (6, 9)), -1, 1)
  cos[0, 2], cos[1, 4] = 1.0, -1.0
  labels = np.array([2, 4, 0, -1, 8, 3])
  mg = margins.get(name, s=64.0, **params)
  got = np.asarray(mg(jnp.asarray(cos, jnp.float32), jnp.asarray(labels)))
  want = 64.0 * cos.copy()
  rows = labels >= 0
  want[rows, labels[rows]] = 64.0 * reference_target(name, cos[rows, labels[rows]], **params)
  np.testing.assert_allclose(got, want, atol=0.15)  # s = 64 magnifies float32 rounding
  np.testing.assert_array_equal(got[3], np.float32(64.0) * cos[3].astype(np.float32))
  valid = labels >= 0
  ce = np.asarray(losses.margin_softmax_cross_entropy(jnp.asarray(want[valid], jnp.float32),
                                                      jnp.asarray(labels[valid])))
  shifted = want[valid] - want[valid].max(1, keepdims=True)
  ref = np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(valid.sum()),
                                                         labels[valid]])
  np.testing.assert_allclose(ce, ref, rtol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('name,params', CASES + [('arcface', {'m': 0.5, 'easy_margin': True}),
                                                 ('arcface', {'m': 0.5,
                                                              'straight_through': True})])
def test_value_and_gradient_finite_at_the_edges(name, params, dtype):
  mg = margins.get(name, **params)
  cos = jnp.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.999999], [0.0, 1.0, -1.0]], dtype)
  labels = jnp.array([0, 0, 2])
  loss = lambda c: losses.margin_softmax_cross_entropy(mg(c, labels), labels)
  value, grad = jax.value_and_grad(loss)(cos.astype(jnp.float32))
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  assert mg(cos, labels).dtype == jnp.float32


def test_gradient_matches_finite_differences():
  mg = margins.get('arcface', m=0.5, s=8.0)
  labels = jnp.array([1, 0])
  f = lambda c: losses.margin_softmax_cross_entropy(mg(c, labels), labels)
  cos = jnp.array([[0.3, 0.2, -0.4], [0.1, 0.6, 0.5]], jnp.float32)
  grad = np.asarray(jax.grad(f)(cos))
  eps = 1e-3
  numeric = np.zeros_like(grad)
  for idx in np.ndindex(*cos.shape):
    up, down = cos.at[idx].add(eps), cos.at[idx].add(-eps)
    numeric[idx] = (float(f(up)) - float(f(down))) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=2e-3)


def test_straight_through_changes_the_value_not_the_gradient():
  labels = jnp.array([0])
  cos = jnp.array([[0.5, 0.1]])
  true = margins.get('arcface', m=0.5)
  st = margins.get('arcface', m=0.5, straight_through=True)
  np.testing.assert_allclose(true(cos, labels), st(cos, labels), rtol=1e-6)
  plain = margins.get('norm_softmax')
  g = lambda mg: jax.grad(lambda c: mg(c, labels)[0, 0])(cos)
  np.testing.assert_allclose(g(st), g(plain), rtol=1e-6)
  assert not np.allclose(g(true), g(plain))


def test_unknown_margin_names_the_valid_ones():
  with pytest.raises(ValueError, match="'arcfce'.*arcface"):
    margins.get('arcfce')
