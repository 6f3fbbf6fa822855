"""The later margins in every head: dense, model-parallel and Partial FC (8 virtual devices).

The same inputs, state and key must give the same loss, gradients and new margin state in the
dense head and in the model-parallel head (where statistics are taken over the global batch,
never per device), and under Partial FC the dense head restricted to the sampled centres. The
margin state is checkpointed and restored, and a short training lowers each loss.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arcface_jax import losses, margins, parallel
from arcface_jax.checkpointing import Checkpointer
from arcface_jax.config_files import load_base
from arcface_jax.parallel import softmax
from arcface_jax.train_state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
  'subcenter': dict(name='subcenter'),
  'curricularface': dict(name='curricularface'),
  'magface': dict(name='magface'),
  'adaface': dict(name='adaface'),
  'elasticface_arc': dict(name='elasticface_arc'),
  'elasticface_cos_plus': dict(name='elasticface_cos', plus=True),
}
# Mid-training state, so hard negatives are lifted and the norms are standardised non-trivially.
STATES = {'curricularface': {'t': 0.4}, 'adaface': {'norm_mean': 40.0, 'norm_std': 25.0}}
DIM, BATCH = 8, 16


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh(8)


def _config(case, sample_rate=1.0):
  config = load_base(os.path.join(REPO, 'configs', 'base.py'))
  config.loss.update(s=16.0, **CASES[case])
  config.model.embedding_dim = DIM
  config.head.sample_rate = sample_rate
  config.head.model_parallel = True
  return config


def _inputs(num_classes, k, seed=0):
  rng = np.random.default_rng(seed)
  shape = (num_classes,) + ((k,) if k > 1 else ()) + (DIM,)
  w = rng.normal(size=shape).astype(np.float32)
  x = rng.normal(size=(BATCH, DIM))
  # Feature norms from ~3 to ~130: across MagFace's [10, 110] and AdaFace's running statistics.
  x = x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(3.0, 130.0, (BATCH, 1))
  y = rng.integers(0, num_classes, BATCH).astype(np.int32)
  return w, x.astype(np.float32), y


def _state(objective, case):
  _, state = objective.init(jax.random.key(0))
  name = CASES[case]['name']
  if name in STATES:
    state = {'margin': {k: jnp.float32(v) for k, v in STATES[name].items()}}
  return state


def _run(objective, w, state, x, y, rng):
  def f(w, x):
    loss, new_state, _ = objective({'weight': w}, state, x, jnp.asarray(y), jnp.int32(3), rng=rng)
    return loss, new_state

  (loss, new_state), (d_w, d_x) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
    jnp.asarray(w), jnp.asarray(x)
  )
  return float(loss), jax.tree.map(np.asarray, new_state), np.asarray(d_w), np.asarray(d_x)


def _assert_same(a, b):
  loss_a, state_a, dw_a, dx_a = a
  loss_b, state_b, dw_b, dx_b = b
  assert loss_a == pytest.approx(loss_b, rel=2e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5), state_a, state_b)
  np.testing.assert_allclose(dw_a, dw_b, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(dx_a, dx_b, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize('case', list(CASES))
def test_dense_model_parallel_and_partial_fc_agree(case, mesh):
  rng = jax.random.key(5)
  # Model-parallel, every centre used: 13 classes padded to 128, 16 a device. (Partial FC below
  # runs the same head; the full head is checked for the (C, K, D) centres and for a state.)
  config = _config(case)
  dense = losses.build_objective(
    config.loss, num_classes=13, embedding_dim=DIM, subcenters=config.head.subcenters
  )
  k = dense.subcenters
  assert k == (3 if case == 'subcenter' else 1)
  if case in ('subcenter', 'adaface'):
    sharded = losses.from_config(config, num_classes=13, mesh=mesh)
    assert isinstance(sharded, parallel.ModelParallelObjective) and sharded.subcenters == k
    w, x, y = _inputs(13, k)
    padded = np.concatenate([w, np.zeros((128 - 13,) + w.shape[1:], np.float32)])
    want = _run(dense, w, _state(dense, case), x, y, rng)
    got = _run(sharded, padded, _state(sharded, case), x, y, rng)
    assert not got[2][13:].any()
    _assert_same((got[0], got[1], got[2][:13], got[3]), want)

  # Partial FC: 300 classes (48 a device), half of each device's centres a step. The dense head
  # over exactly the sampled centres is the reference.
  config = _config(case, sample_rate=0.5)
  sharded = losses.from_config(config, num_classes=300, mesh=mesh)
  w, x, y = _inputs(300, k, seed=1)
  padded = np.concatenate([w, np.zeros((384 - 300,) + w.shape[1:], np.float32)])
  key = jax.random.fold_in(jax.random.key(sharded.seed), 3)  # the head's draw at step 3
  sampled = np.asarray(
    softmax.margin_softmax(
      jnp.asarray(padded),
      jnp.asarray(x),
      jnp.asarray(y),
      margin=margins.get('arcface'),
      mesh=mesh,
      num_classes=300,
      sample_rate=0.5,
      key=key,
    ).sampled
  )[:300]  # the draw only
  assert 0 < sampled.sum() < 300 and sampled[y].all()
  classes = np.flatnonzero(sampled)
  remap = np.full(384, -1, np.int32)
  remap[classes] = np.arange(len(classes))
  subset = losses.build_objective(
    config.loss, num_classes=len(classes), embedding_dim=DIM, subcenters=config.head.subcenters
  )
  want = _run(subset, w[classes], _state(subset, case), x, remap[y], rng)
  got = _run(sharded, padded, _state(sharded, case), x, y, rng)
  assert not got[2][:300][~sampled].any()  # unsampled centres get no gradient
  _assert_same((got[0], got[1], got[2][classes], got[3]), want)
  if case in ('curricularface', 'adaface'):  # the state moved, from the global batch
    assert any(np.any(v != STATES[case][key]) for key, v in got[1]['margin'].items())


@pytest.mark.parametrize('case', ['curricularface', 'magface', 'adaface', 'elasticface_cos_plus'])
def test_chunked_head_agrees_with_the_dense_head(case, mesh):
  """The chunked online softmax (16 centres a device in blocks of 5, the last block shifted onto
  the one before) binds the rows prepared over the global batch: the same loss, gradients (MagFace's
  through m(‖x‖) included), new state and, for ElasticFace, draws as the dense head."""
  config = _config(case)
  config.head.chunk = 5
  chunked = losses.from_config(config, num_classes=13, mesh=mesh)
  assert isinstance(chunked, parallel.ModelParallelObjective) and chunked.chunk == 5
  dense = losses.build_objective(config.loss, num_classes=13, embedding_dim=DIM)
  w, x, y = _inputs(13, 1, seed=2)
  padded = np.concatenate([w, np.zeros((128 - 13, DIM), np.float32)])
  rng = jax.random.key(7)
  want = _run(dense, w, _state(dense, case), x, y, rng)
  got = _run(chunked, padded, _state(chunked, case), x, y, rng)
  assert not got[2][13:].any()
  _assert_same((got[0], got[1], got[2][:13], got[3]), want)


@pytest.mark.parametrize('model_parallel', [False, True])
def test_margin_state_checkpoint_round_trip(model_parallel, mesh, tmp_path):
  config = _config('adaface')
  config.head.model_parallel = model_parallel
  objective = losses.from_config(config, num_classes=13, mesh=mesh)
  tx = optax.sgd(0.1)
  head, state = objective.init(jax.random.key(0))
  assert state == {'margin': {'norm_mean': 20.0, 'norm_std': 100.0}}
  w, x, y = _inputs(13, 1)
  head = {'weight': head['weight'].at[:13].set(w)}
  _, state, _ = jax.jit(lambda h, s: objective(h, s, jnp.asarray(x), jnp.asarray(y), 0))(
    head, state
  )
  params = {'backbone': {'dense': jnp.arange(3.0)}, 'head': head}
  train_state = TrainState(
    step=jnp.int32(1),
    params=params,
    batch_stats={},
    head_state=state,
    opt_state=tx.init(params),
    skipped_steps=jnp.int32(0),
    consecutive_skips=jnp.int32(0),
  )
  saver = Checkpointer(str(tmp_path), asynchronous=False)
  saver.save(train_state, step=1, force=True)
  saver.close()
  abstract = jax.eval_shape(lambda: train_state)
  loader = Checkpointer(str(tmp_path), asynchronous=False)
  restored = loader.restore(abstract)
  loader.close()
  assert float(restored.head_state['margin']['norm_mean']) == float(state['margin']['norm_mean'])
  assert float(restored.head_state['margin']['norm_std']) == float(state['margin']['norm_std'])
  assert float(state['margin']['norm_mean']) != 20.0


def _cluster_data(num_classes=4, per_class=8, dim=DIM, seed=0):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(num_classes, dim)) * 1.5
  labels = np.repeat(np.arange(num_classes), per_class)
  points = means[labels] + rng.normal(size=(len(labels), dim))
  return jnp.asarray(points, jnp.float32), jnp.asarray(labels, jnp.int32)


@pytest.mark.parametrize('case', list(CASES))
def test_short_training_lowers_the_loss(case):
  """A linear 'backbone' on Gaussian clusters, 60 jitted Adam steps with the state carried and
  a fresh key each step (the train step's contract)."""
  points, labels = _cluster_data()
  config = _config(case)
  config.head.model_parallel = False
  objective = losses.from_config(config, num_classes=4)
  head, state = objective.init(jax.random.key(1))
  # Norms of ~20-40: inside MagFace's range, so its margin and g(a) both act.
  params = {
    'backbone': 4.0 * jnp.eye(DIM) + 0.1 * jax.random.normal(jax.random.key(2), (DIM, DIM)),
    'head': head,
  }
  tx = optax.adam(0.05)

  def loss_fn(p, s, step):
    rng = jax.random.fold_in(jax.random.key(9), step)
    return objective(p['head'], s, points @ p['backbone'], labels, step, rng=rng)

  @jax.jit
  def train(params, state):
    def step(carry, i):
      p, s, opt = carry
      (_, s_new), g = jax.value_and_grad(lambda q: loss_fn(q, s, i)[:2], has_aux=True)(p)
      updates, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, updates), s_new, opt), None

    (p, s, _), _ = jax.lax.scan(step, (params, state, tx.init(params)), jnp.arange(60))
    return loss_fn(params, state, 0)[0], loss_fn(p, s, 0)[0], s

  before, after, final_state = train(params, state)
  assert np.isfinite(float(after)) and float(after) < 0.8 * float(before)
  assert jax.tree.structure(final_state) == jax.tree.structure(state)
