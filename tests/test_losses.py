"""Objectives against float64 NumPy references written here; gradients; toy training; CASIA rows."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arcface_jax import losses, margins, parallel
from arcface_jax.config_files import load_base, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASIA = os.path.join(REPO, 'configs', 'casia.py')
CASIA_ROWS = (
  'softmax',
  'norm_softmax',
  'sphereface',
  'cosface',
  'arcface',
  'cm1',
  'cm2',
  'triplet',
  'arcface_intra',
  'arcface_inter',
  'arcface_intra_inter',
  'arcface_triplet',
)


def _loss_config(**overrides):
  config = load_base(CASIA).loss
  config.update(overrides)
  return config


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ref_ce(logits, labels):
  z = logits - logits.max(1, keepdims=True)
  return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels])


def _problem(seed=0, b=6, c=5, d=4):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=(b, d)),
    rng.normal(size=(c, d)),
    rng.integers(0, c, b),
    rng.normal(size=(c,)),
  )


def _ref_semi_hard_triplet(x, labels, margin):
  """Brute-force float64 FaceNet semi-hard mining over angles, loop by loop."""
  xn = _normalize(x)
  theta = np.arccos(np.clip(xn @ xn.T, -1, 1))
  terms = []
  for a in range(len(labels)):
    negs = [n for n in range(len(labels)) if labels[n] != labels[a]]
    if not negs:
      continue
    for p in range(len(labels)):
      if p == a or labels[p] != labels[a]:
        continue
      farther = [theta[a, n] for n in negs if theta[a, n] > theta[a, p]]
      theta_an = min(farther) if farther else max(theta[a, n] for n in negs)
      terms.append(max(theta[a, p] - theta_an + margin, 0.0))
  return np.mean(terms)


def test_cross_entropy_skips_rows_without_target():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)) * 30
  labels = np.array([3, -1, 0, 6, -1])
  got = losses.margin_softmax_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  keep = labels >= 0
  np.testing.assert_allclose(float(got), _ref_ce(logits[keep], labels[keep]), rtol=1e-5)


@pytest.mark.parametrize('name', ['arcface', 'softmax', 'sphereface', 'cosface'])
def test_objective_matches_float64_reference(name):
  x, w, labels, bias = _problem()
  objective = losses.build_objective(_loss_config(name=name), num_classes=5, embedding_dim=4)
  params = {'weight': jnp.asarray(w, jnp.float32)}
  if name == 'softmax':
    params['bias'] = jnp.asarray(bias, jnp.float32)
  step = 7
  loss, _, metrics = jax.jit(objective)(
    params, {}, jnp.asarray(x, jnp.float32), jnp.asarray(labels), jnp.int32(step)
  )
  cos = _normalize(x) @ _normalize(w).T
  rows = np.arange(len(labels))
  ct = cos[rows, labels]
  logits = cos.copy()
  if name == 'softmax':
    logits = x @ w.T + bias
  elif name == 'arcface':
    th = np.arccos(ct)
    logits[rows, labels] = np.where(th + 0.5 < np.pi, np.cos(th + 0.5), ct - 0.5 * np.sin(0.5))
    logits *= 64
  elif name == 'cosface':
    logits[rows, labels] = ct - 0.35
    logits *= 64
  else:
    lam = max(5.0, 1000.0 / (1 + 0.12 * step))
    th = np.arccos(ct)
    k = np.minimum(np.floor(4 * th / np.pi), 3)
    psi = (-1.0) ** k * np.cos(4 * th) - 2 * k
    logits[rows, labels] = (lam * ct + psi) / (1 + lam)
    logits *= np.linalg.norm(x, axis=1, keepdims=True)
    assert float(metrics['sphereface_lambda']) == pytest.approx(lam, rel=1e-6)
  np.testing.assert_allclose(float(loss), _ref_ce(logits, labels), rtol=2e-5)
  negatives = np.where(np.eye(5, dtype=bool)[labels], -np.inf, cos)
  np.testing.assert_allclose(float(metrics['cos_target']), ct.mean(), atol=1e-6)
  np.testing.assert_allclose(
    float(metrics['theta_target_deg']), np.degrees(np.arccos(ct)).mean(), atol=1e-3
  )
  np.testing.assert_allclose(
    float(metrics['cos_hardest_negative']), negatives.max(1).mean(), atol=1e-6
  )
  assert float(metrics['loss']) == float(loss)


def test_intra_inter_triplet_terms_match_float64_reference():
  x, w, labels, _ = _problem(1, b=8, c=4)
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 0])
  config = _loss_config(
    name='norm_softmax', intra_weight=0.7, inter_weight=0.3, triplet_weight=2.0, triplet_margin=0.35
  )
  objective = losses.build_objective(config, num_classes=4, embedding_dim=4)
  loss, _, metrics = jax.jit(objective)(
    {'weight': jnp.asarray(w, jnp.float32)},
    {},
    jnp.asarray(x, jnp.float32),
    jnp.asarray(labels),
    jnp.int32(0),
  )
  cos = _normalize(x) @ _normalize(w).T
  rows = np.arange(8)
  intra = np.arccos(cos[rows, labels]).mean() / np.pi
  wn = _normalize(w)
  cc = np.clip(wn @ wn.T, -1, 1)
  inter = -sum(np.arccos(cc[labels[i], j]) for i in rows for j in range(4) if j != labels[i])
  inter /= np.pi * 8 * 3
  triplet = _ref_semi_hard_triplet(x, labels, 0.35)
  softmax = _ref_ce(64 * cos, labels)
  np.testing.assert_allclose(float(metrics['intra_loss']), intra, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['inter_loss']), inter, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['triplet_loss']), triplet, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
    float(loss), softmax + 0.7 * intra + 0.3 * inter + 2 * triplet, rtol=1e-5
  )


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_triplet_mining_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(12, 3))
  labels = rng.integers(0, 3, 12)
  got, metrics = jax.jit(losses.triplet_loss, static_argnums=2)(
    jnp.asarray(x, jnp.float32), jnp.asarray(labels), 0.35
  )
  np.testing.assert_allclose(float(got), _ref_semi_hard_triplet(x, labels, 0.35), rtol=1e-4)
  assert np.isfinite(float(metrics['cos_hardest_negative']))


def test_center_loss_value_and_centre_update():
  x, _, labels, _ = _problem(2, b=6, c=3)
  labels = np.array([0, 0, 2, 2, 2, 0])
  centres = np.random.default_rng(5).normal(size=(3, 4))
  config = _loss_config(name='arcface', center_weight=0.1, center_alpha=0.5)
  objective = losses.build_objective(config, num_classes=3, embedding_dim=4)
  params, state = objective.init(jax.random.PRNGKey(0))
  assert state['centres'].shape == (3, 4)
  _, new_state, metrics = jax.jit(objective)(
    params,
    {'centres': jnp.asarray(centres, jnp.float32)},
    jnp.asarray(x, jnp.float32),
    jnp.asarray(labels),
    jnp.int32(0),
  )
  want = 0.5 * np.mean(np.sum((x - centres[labels]) ** 2, 1))
  np.testing.assert_allclose(float(metrics['center_loss']), want, rtol=1e-5)
  moved = centres.copy()
  for j in range(3):
    members = labels == j
    moved[j] -= 0.5 * (centres[j] - x[members]).sum(0) / (1 + members.sum())
  np.testing.assert_allclose(np.asarray(new_state['centres']), moved, rtol=1e-5, atol=1e-6)
  assert np.array_equal(np.asarray(new_state['centres'])[1], centres[1].astype(np.float32))


@pytest.mark.parametrize(
  'name,extra',
  [
    ('arcface', dict(intra_weight=1.0, inter_weight=1.0)),
    ('combined', dict(m1=0.9, m2=0.4, m3=0.15)),
    ('sphereface', {}),
    ('softmax', {}),
    ('triplet', {}),
  ],
)
def test_gradients_match_finite_differences_in_float64(name, extra):
  with jax.enable_x64(True):
    x, w, labels, bias = _problem(3, b=6, c=4, d=3)
    labels = np.array([0, 1, 1, 2, 3, 0])
    config = _loss_config(name=name, s=4.0, **extra)
    objective = losses.build_objective(config, num_classes=4, embedding_dim=3)
    params = {} if name == 'triplet' else {'weight': jnp.asarray(w)}
    if name == 'softmax':
      params['bias'] = jnp.asarray(bias)
    f = jax.jit(lambda p, e: objective(p, {}, e, jnp.asarray(labels), 3)[0])
    g_params, g_emb = jax.grad(f, argnums=(0, 1))(params, jnp.asarray(x))
    assert g_emb.dtype == jnp.float64
    eps = 1e-6
    for leaf, grad in [(x, g_emb)] + ([(w, g_params['weight'])] if params else []):
      numeric = np.zeros_like(leaf)
      for idx in np.ndindex(*leaf.shape):
        up, down = leaf.copy(), leaf.copy()
        up[idx] += eps
        down[idx] -= eps
        if leaf is x:
          numeric[idx] = (f(params, up) - f(params, down)) / (2 * eps)
        else:
          numeric[idx] = (f(dict(params, weight=up), x) - f(dict(params, weight=down), x)) / (
            2 * eps
          )
      np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('name', ['arcface', 'combined', 'sphereface', 'triplet'])
def test_finite_with_bf16_embeddings_on_a_class_centre(name):
  config = _loss_config(name=name, intra_weight=0.0 if name == 'triplet' else 1.0)
  objective = losses.build_objective(config, num_classes=3, embedding_dim=4)
  params, state = objective.init(jax.random.PRNGKey(0))
  # Embeddings exactly on their centres (cos = 1) and opposite (cos = −1), in bfloat16.
  centre = params['weight'] if params else jnp.eye(3, 4)
  emb = jnp.concatenate([centre, -centre])[jnp.array([0, 1, 2, 3, 4, 5])].astype(jnp.bfloat16)
  labels = jnp.array([0, 1, 2, 0, 1, 2])

  def f(p, e):
    return objective(p, state, e, labels, jnp.int32(0))[0]

  loss, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, emb)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads))


def _cluster_data(num_classes=4, per_class=8, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(num_classes, dim)) * 1.5
  labels = np.repeat(np.arange(num_classes), per_class)
  points = means[labels] + rng.normal(size=(len(labels), dim))
  return jnp.asarray(points, jnp.float32), jnp.asarray(labels, jnp.int32)


TOY = [
  ('softmax', {}),
  ('norm_softmax', {}),
  ('sphereface', {}),
  ('cosface', {}),
  ('arcface', {}),
  ('combined', {}),
  ('combined', dict(m1=0.9, m2=0.4, m3=0.15)),
  ('triplet', {}),
  ('arcface', dict(intra_weight=1.0, inter_weight=1.0)),
  ('arcface', dict(triplet_weight=1.0)),
  ('arcface', dict(center_weight=0.01)),
]


@pytest.mark.parametrize('name,extra', TOY, ids=[n + ','.join(e) for n, e in TOY])
def test_short_training_lowers_the_loss(name, extra):
  """A trainable linear 'backbone' on Gaussian clusters, 50 jitted Adam steps in one scan."""
  points, labels = _cluster_data()
  objective = losses.build_objective(
    _loss_config(name=name, s=16.0 if name != 'sphereface' else None, **extra),
    num_classes=4,
    embedding_dim=8,
  )
  head, state = objective.init(jax.random.PRNGKey(1))
  params = {
    'backbone': jnp.eye(8) + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (8, 8)),
    'head': head,
  }
  tx = optax.adam(0.05)

  def loss_fn(p, s):
    # Fixed step 0: SphereFace's λ is then the same before and after, so losses compare.
    return objective(p['head'], s, points @ p['backbone'], labels, jnp.int32(0))

  @jax.jit
  def train(params, state):
    def step(carry, _):
      p, s, opt = carry
      (_, (s_new, _)), g = jax.value_and_grad(lambda q: _pack(loss_fn(q, s)), has_aux=True)(p)
      updates, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, updates), s_new, opt), None

    (p, s, _), _ = jax.lax.scan(step, (params, state, tx.init(params)), None, length=50)
    return loss_fn(params, state)[0], loss_fn(p, s)[0]

  before, after = train(params, state)
  assert np.isfinite(float(after)) and float(after) < 0.8 * float(before)


def _pack(out):
  loss, state, metrics = out
  return loss, (state, metrics)


def test_objective_under_sharded_jit_equals_single_device():
  points, labels = _cluster_data(per_class=4)
  objective = losses.build_objective(
    _loss_config(name='arcface', intra_weight=1.0, inter_weight=1.0, triplet_weight=1.0),
    num_classes=4,
    embedding_dim=8,
  )
  params, state = objective.init(jax.random.PRNGKey(0))
  f = lambda p, e: objective(p, state, e, labels, jnp.int32(0))[0]
  want = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, points)
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(points, parallel.batch_sharding(mesh))
  got = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, sharded)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('row', CASIA_ROWS)
def test_casia_rows_build(row):
  config = load_config(f'{CASIA}:{row}')
  assert (config.model.name, config.train.batch_size, config.train.num_steps) == (
    'iresnet50',
    512,
    32_000,
  )
  assert tuple(config.train.lr_boundaries) == (20_000, 28_000)
  assert tuple(config.eval.bins) == ('lfw', 'cfp_fp', 'agedb_30')
  objective = losses.build_objective(config.loss, num_classes=10, embedding_dim=8)
  params, state = objective.init(jax.random.PRNGKey(0))
  assert ('bias' in params) == (row == 'softmax')
  assert ('weight' in params) == (row != 'triplet')
  assert state == {}
  expected = {
    'sphereface': (1.35, 0.0, 0.0),
    'cm1': (1.0, 0.3, 0.2),
    'cm2': (0.9, 0.4, 0.15),
    'arcface': (1.0, 0.5, 0.0),
    'cosface': (1.0, 0.0, 0.35),
    'norm_softmax': (1.0, 0.0, 0.0),
  }
  if row in expected:
    mg = objective.margin
    assert (mg.m1, mg.m2, mg.m3, mg.scale) == expected[row] + (64.0,)
  assert (objective.intra_weight > 0) == ('intra' in row)
  assert (objective.inter_weight > 0) == ('inter' in row)
  assert (objective.triplet_weight > 0) == (row == 'arcface_triplet')


def test_casia_default_is_arcface_and_unknown_rows_fail():
  assert load_config(CASIA).loss.name == 'arcface'
  with pytest.raises(ValueError, match='cm2'):
    load_config(f'{CASIA}:cm3')


def test_unknown_loss_name_lists_valid_ones():
  with pytest.raises(ValueError, match="'arcfce'.*arcface"):
    losses.build_objective(_loss_config(name='arcfce'), num_classes=3, embedding_dim=2)


@pytest.mark.parametrize(
  'params',
  [
    dict(m2=0.5),
    dict(m1=0.9, m2=0.4, m3=0.15),
    dict(m2=0.5, straight_through=True),
    dict(m2=0.5, easy_margin=True),
  ],
  ids=str,
)
def test_fused_margin_cross_entropy_equals_the_composition(params):
  with jax.enable_x64(True):
    cos = jnp.asarray(np.random.default_rng(0).uniform(-0.99, 0.99, (6, 9)))
    labels = jnp.array([2, 4, 0, -1, 8, 3])
    mg = margins.CombinedMargin(scale=16.0, **params)
    fused = jax.value_and_grad(lambda c: losses.fused_margin_cross_entropy(c, labels, mg))
    plain = jax.value_and_grad(lambda c: losses.margin_softmax_cross_entropy(mg(c, labels), labels))
    (v1, g1), (v2, g2) = jax.jit(fused)(cos), jax.jit(plain)(cos)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-10, atol=1e-14)
    assert np.all(np.asarray(g1)[3] == 0)  # the −1 row gets no gradient
