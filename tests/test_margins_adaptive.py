"""The later margins against float64 NumPy references written from their papers and official code.

Each reference below restates the formula with arccos and plain NumPy (the code under test uses
the arccos-free identities and masked selects); state updates (CurricularFace t, AdaFace norm
statistics) are compared too, then gradients against finite differences in float64, and values
and gradients must stay finite at cos θ = ±1 and at the norm bounds.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import losses, margins
from arcface_jax.config_files import load_base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 64.0


def _problem(seed=0, b=6, c=9):
  rng = np.random.default_rng(seed)
  cos = rng.uniform(-1, 1, (b, c))
  labels = rng.integers(0, c, b)
  rows = np.arange(b)
  # Edges: a target at cos = 1 and at −1, a negative at 1 and at −1.
  cos[0, labels[0]], cos[1, labels[1]] = 1.0, -1.0
  cos[2, (labels[2] + 1) % c], cos[3, (labels[3] + 1) % c] = 1.0, -1.0
  cos[4, labels[4]] = 0.97  # an easy sample, target near its centre
  norms = rng.uniform(5.0, 120.0, b)
  norms[0], norms[1] = 10.0, 110.0  # exactly at MagFace's bounds
  return cos, labels, rows, norms


def ref_curricular(cos, labels, t, m=0.5, momentum=0.99):
  """CurricularFace (paper eq. 8-9, official head): t first updated with the batch, then used."""
  rows = np.arange(len(labels))
  c_t = cos[rows, labels]
  c_tm = np.cos(np.arccos(c_t) + m)
  target = np.where(c_t > np.cos(np.pi - m), c_tm, c_t - np.sin(np.pi - m) * m)
  t_new = momentum * t + (1 - momentum) * c_t.mean()
  out = cos.copy()
  hard = cos > c_tm[:, None]
  out[hard] = cos[hard] * (t_new + cos[hard])
  out[rows, labels] = target
  return S * out, t_new


def ref_magface(
  cos, labels, norms, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0, easy_margin=True
):
  """MagFace: m(a) linear on [l_a, u_a]; ArcFace target; λ_g·mean(1/a + a/u_a²)."""
  rows = np.arange(len(labels))
  a = np.clip(norms, l_a, u_a)
  m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
  c_t = cos[rows, labels]
  c_tm = np.cos(np.arccos(c_t) + m)
  if easy_margin:
    target = np.where(c_t > 0, c_tm, c_t)
  else:
    target = np.where(c_t > np.cos(np.pi - m), c_tm, c_t - np.sin(np.pi - m) * m)
  out = cos.copy()
  out[rows, labels] = target
  return S * out, lambda_g * np.mean(1 / a + a / u_a**2)


def ref_adaface(cos, labels, norms, mean, std, m=0.4, h=0.333, momentum=0.99, eps=1e-3):
  """AdaFace (official head): statistics updated first (unbiased std), then ẑ, g_angle, g_add."""
  rows = np.arange(len(labels))
  a = np.clip(norms, 0.001, 100)
  mean = momentum * mean + (1 - momentum) * a.mean()
  std = momentum * std + (1 - momentum) * a.std(ddof=1)
  z = np.clip(h * (a - mean) / (std + eps), -1, 1)
  cos = np.clip(cos, -1 + eps, 1 - eps)
  theta = np.arccos(cos[rows, labels])
  target = np.cos(np.clip(theta - m * z, eps, np.pi - eps)) - (m + m * z)
  out = cos.copy()
  out[rows, labels] = target
  return S * out, mean, std


def ref_elastic(cos, labels, normal_draws, kind, m, sigma, plus):
  """ElasticFace: m_i = m + σ·z_i; plus gives the i-th largest cos θ_y the i-th smallest m_i."""
  rows = np.arange(len(labels))
  drawn = m + sigma * normal_draws
  c_t = cos[rows, labels]
  if plus:
    assigned = np.empty_like(drawn)
    assigned[np.argsort(-c_t, kind='stable')] = np.sort(drawn)
    drawn = assigned
  target = np.cos(np.arccos(c_t) + drawn) if kind == 'arc' else c_t - drawn
  out = cos.copy()
  out[rows, labels] = target
  return S * out, drawn


def _apply(mg, cos, labels, state=None, norms=None, rng=None):
  state = mg.init_state() if state is None else state
  logits, new_state = mg.apply(
    jnp.asarray(cos, jnp.float32),
    jnp.asarray(labels),
    state=state,
    norms=None if norms is None else jnp.asarray(norms, jnp.float32),
    rng=rng,
  )
  return np.asarray(logits, np.float64), jax.tree.map(float, new_state)


ATOL = S * 2e-5


def test_init_states_and_stateless_wave1_margins():
  assert margins.get('curricularface').init_state() == {'t': 0.0}
  assert margins.get('adaface').init_state() == {'norm_mean': 20.0, 'norm_std': 100.0}
  for name in ('arcface', 'cosface', 'subcenter', 'magface', 'elasticface_arc', 'sphereface'):
    assert margins.get(name).init_state() == {}
  cos, labels, _, _ = _problem()
  mg = margins.get('arcface')
  logits, state = mg.apply(jnp.asarray(cos, jnp.float32), jnp.asarray(labels), state={})
  np.testing.assert_array_equal(logits, mg(jnp.asarray(cos, jnp.float32), jnp.asarray(labels)))
  assert state == {}


def test_curricularface_matches_reference_over_two_steps():
  mg = margins.get('curricularface')
  state, t = mg.init_state(), 0.0
  for seed in (0, 1):
    cos, labels, _, _ = _problem(seed)
    got, state = _apply(mg, cos, labels, state)
    want, t = ref_curricular(cos, labels, t)
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert state['t'] == pytest.approx(t, abs=1e-6)
  state = {'t': jnp.float32(0.8)}  # late in training: hard negatives are lifted strongly
  got, _ = _apply(mg, cos, labels, state)
  np.testing.assert_allclose(got, ref_curricular(cos, labels, 0.8)[0], atol=ATOL)


@pytest.mark.parametrize('easy_margin', [True, False])
def test_magface_matches_reference(easy_margin):
  cos, labels, _, norms = _problem(2)
  mg = margins.get('magface', easy_margin=easy_margin)
  got, state = _apply(mg, cos, labels, norms=norms)
  want, reg = ref_magface(cos, labels, norms, easy_margin=easy_margin)
  np.testing.assert_allclose(got, want, atol=ATOL)
  assert float(mg.regularizer(jnp.asarray(norms, jnp.float32))) == pytest.approx(reg, rel=1e-6)
  assert state == {}
  with pytest.raises(ValueError, match='norms'):
    mg.apply(jnp.asarray(cos), jnp.asarray(labels), state={})


def test_adaface_matches_reference_and_updates_statistics_first():
  mg = margins.get('adaface')
  state, mean, std = mg.init_state(), 20.0, 100.0
  for seed in (3, 4):
    cos, labels, _, norms = _problem(seed)
    got, state = _apply(mg, cos, labels, state, norms=norms)
    want, mean, std = ref_adaface(cos, labels, norms, mean, std)
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert state['norm_mean'] == pytest.approx(mean, rel=1e-6)
    assert state['norm_std'] == pytest.approx(std, rel=1e-6)
  # Standardised norms near the mean: ẑ spans (−1, 1) and both parts of the margin act.
  state = {'norm_mean': jnp.float32(50.0), 'norm_std': jnp.float32(20.0)}
  got, _ = _apply(mg, cos, labels, state, norms=norms)
  np.testing.assert_allclose(got, ref_adaface(cos, labels, norms, 50.0, 20.0)[0], atol=ATOL)


@pytest.mark.parametrize(
  'name,plus',
  [
    ('elasticface_arc', False),
    ('elasticface_arc', True),
    ('elasticface_cos', False),
    ('elasticface_cos', True),
  ],
)
def test_elasticface_matches_reference(name, plus):
  cos, labels, rows, _ = _problem(5, b=8)
  mg = margins.get(name, plus=plus)
  assert mg.sigma == {('elasticface_arc', True): 0.0175, ('elasticface_cos', True): 0.02}.get(
    (name, plus), 0.05
  )
  key = jax.random.key(7)
  z = np.asarray(jax.random.normal(key, (8,), jnp.float32), np.float64)
  got, _ = _apply(mg, cos, labels, rng=key)
  want, drawn = ref_elastic(cos, labels, z, name.rsplit('_', 1)[1], mg.m, mg.sigma, plus)
  np.testing.assert_allclose(got, want, atol=ATOL)
  again, _ = _apply(mg, cos, labels, rng=key)
  np.testing.assert_array_equal(got, again)  # same key, same draws
  other, _ = _apply(mg, cos, labels, rng=jax.random.key(8))
  assert not np.allclose(other[rows, labels], got[rows, labels])
  if plus:  # the larger cos θ_y, the smaller margin
    c_t = cos[rows, labels]
    assert np.all(np.diff(drawn[np.argsort(-c_t)]) >= 0)
    # The official code's assignment (sorted margins indexed by the sort permutation) differs.
    official = np.sort(mg.m + mg.sigma * z)[np.argsort(-c_t)]
    assert not np.allclose(official, drawn)
  with pytest.raises(ValueError, match='rng'):
    mg.apply(jnp.asarray(cos), jnp.asarray(labels), state={})


def test_subcenter_is_arcface_over_the_max_sub_centre():
  rng = np.random.default_rng(0)
  cos3 = rng.uniform(-1, 1, (4, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(margins.subcenter_cos(jnp.asarray(cos3)), cos3.max(-1))
  assert margins.get('subcenter') == margins.get('arcface')
  assert margins.subcenters_for('subcenter', None) == 3
  assert margins.subcenters_for('arcface', None) == 1
  assert margins.subcenters_for('cosface', 2) == 2
  with pytest.raises(ValueError, match='subcenters'):
    margins.subcenters_for('subcenter', 0)


GRAD_CASES = [
  ('curricularface', {}),
  ('magface', {}),
  ('magface', dict(easy_margin=False)),
  ('adaface', {}),
  ('elasticface_arc', {}),
  ('elasticface_cos', dict(plus=True)),
]


def _loss_fn(mg, labels, state, rng, fixed_target_cos=None):
  """The loss as a function of (cos, norms). With `fixed_target_cos` the batch statistics that
  carry no gradient in the official code (t, the hard-negative threshold, the plus ranking) are
  taken at those target cosines, so finite differences see only the differentiated path."""

  def f(cos, norms):
    if fixed_target_cos is None:
      logits, _ = mg.apply(cos, labels, state=state, norms=norms, rng=rng)
    else:
      rows, _ = mg.prepare(fixed_target_cos, labels >= 0, state=state, norms=norms, rng=rng)
      logits = mg.bind(rows)(cos, labels)
    loss = losses.margin_softmax_cross_entropy(logits, labels)
    if hasattr(mg, 'regularizer'):
      loss = loss + mg.regularizer(norms)
    return loss

  return f


@pytest.mark.parametrize('name,params', GRAD_CASES, ids=[n + str(p) for n, p in GRAD_CASES])
def test_gradients_match_finite_differences_in_float64(name, params):
  with jax.enable_x64(True):
    rng = np.random.default_rng(11)
    cos = rng.uniform(-0.9, 0.9, (4, 5))
    labels = jnp.array([0, 3, 1, 4])
    norms = rng.uniform(15.0, 90.0, 4)
    mg = margins.get(name, s=8.0, **params)
    state = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), mg.init_state())
    target_cos = jnp.asarray(cos[np.arange(4), np.asarray(labels)])
    f = jax.jit(_loss_fn(mg, labels, state, jax.random.key(1), target_cos))
    full = _loss_fn(mg, labels, state, jax.random.key(1))
    assert float(full(jnp.asarray(cos), jnp.asarray(norms))) == pytest.approx(
      float(f(jnp.asarray(cos), jnp.asarray(norms))), rel=1e-12
    )
    np.testing.assert_allclose(
      jax.grad(full)(jnp.asarray(cos), jnp.asarray(norms)),
      jax.grad(f)(jnp.asarray(cos), jnp.asarray(norms)),
      rtol=1e-12,
    )
    g_cos, g_norm = jax.grad(f, argnums=(0, 1))(jnp.asarray(cos), jnp.asarray(norms))
    eps = 1e-6
    checks = [(cos, g_cos, 0)] + ([] if name == 'adaface' else [(norms, g_norm, 1)])
    for arr, grad, which in checks:
      numeric = np.zeros_like(arr)
      for idx in np.ndindex(*arr.shape):
        up, down = arr.copy(), arr.copy()
        up[idx] += eps
        down[idx] -= eps
        args_up = (up, norms) if which == 0 else (cos, up)
        args_down = (down, norms) if which == 0 else (cos, down)
        numeric[idx] = (f(*map(jnp.asarray, args_up)) - f(*map(jnp.asarray, args_down))) / (2 * eps)
      np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-5, atol=1e-8)
    if name == 'magface':  # the margin and g(a) pull on the norm; AdaFace's norms are detached
      assert np.any(np.asarray(g_norm) != 0)
    if name == 'adaface':
      assert np.all(np.asarray(g_norm) == 0)


@pytest.mark.parametrize(
  'name',
  ['curricularface', 'magface', 'adaface', 'elasticface_arc', 'elasticface_cos', 'subcenter'],
)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_value_and_gradient_finite_at_the_edges(name, dtype):
  cos, labels, _, norms = _problem(6)
  norms[2], norms[3], norms[5] = 0.0, 1e4, 100.0  # below l_a, above u_a, AdaFace's clip
  mg = margins.get(name)
  state = {'t': jnp.float32(0.9)} if name == 'curricularface' else mg.init_state()
  f = _loss_fn(mg, jnp.asarray(labels), state, jax.random.key(0))
  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
    jnp.asarray(cos, dtype), jnp.asarray(norms, jnp.float32)
  )
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def test_parameter_ranges_and_names_are_clear_errors():
  for name, bad, match in [
    ('curricularface', dict(momentum=1.0), 'momentum'),
    ('curricularface', dict(m=2.0), 'm=2.0'),
    ('magface', dict(l_a=120.0), 'l_a'),
    ('magface', dict(l_m=0.9), 'l_m'),
    ('magface', dict(lambda_g=-1.0), 'lambda_g'),
    ('adaface', dict(h=0.0), 'h'),
    ('elasticface_cos', dict(sigma=-0.1), 'sigma'),
    ('adaface', dict(s=0.0), 's'),
  ]:
    with pytest.raises(ValueError, match=match):
      margins.get(name, **bad)
  with pytest.raises(ValueError, match='do not apply'):
    margins.get('magface', sigma=0.1)
  with pytest.raises(ValueError, match='do not apply'):
    margins.get('arcface', momentum=0.9)
  with pytest.raises(TypeError, match='apply'):
    margins.get('adaface')(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32))


def test_from_config_resolves_every_new_key():
  config = load_base(os.path.join(REPO, 'configs', 'base.py')).loss
  config.name = 'magface'
  mg = margins.from_config(config)
  assert (mg.scale, mg.l_a, mg.u_a, mg.l_m, mg.u_m, mg.lambda_g, mg.easy_margin) == (
    64.0,
    10.0,
    110.0,
    0.45,
    0.8,
    35.0,
    True,
  )
  config.update(name='adaface', s=32.0, h=0.5, momentum=0.9, m=0.3)
  mg = margins.from_config(config)
  assert (mg.scale, mg.m, mg.h, mg.momentum) == (32.0, 0.3, 0.5, 0.9)
  config.update(name='elasticface_cos', m=None, h=None, momentum=None, plus=True)
  mg = margins.from_config(config)
  assert (mg.kind, mg.m, mg.sigma, mg.plus) == ('cos', 0.35, 0.02, True)
  config.update(name='arcface', plus=None)
  assert margins.from_config(config).easy_margin is False
  assert math.isclose(margins.from_config(config).m2, 0.5)
