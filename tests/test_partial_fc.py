"""Partial FC on 8 virtual devices: sampling, lazy updates, sharded state and checkpoints.

r < 1 must keep every positive, equal the exact softmax over the centres it sampled, and give the
unsampled centres a zero gradient; the lazy optimizer must leave them (and their momentum) alone;
the centres and their optimizer state stay split by class, and a checkpoint written on 8 devices
restores, still split, on 4.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from test_parallel_softmax import assert_close, reference

from arcface_jax import margins, optim, parallel
from arcface_jax.checkpointing import Checkpointer
from arcface_jax.config_files import load_base
from arcface_jax.parallel import lazy, partial_fc, softmax
from arcface_jax.train_state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh(8)


def test_num_sampled_is_rate_times_block_but_holds_a_whole_batch_of_positives():
  assert partial_fc.num_sampled(1.0, 1000, 512) == 1000
  assert partial_fc.num_sampled(0.1, 125_000, 512) == 12_500
  assert partial_fc.num_sampled(0.1, 1000, 512) == 512  # int(r·C_local) = 100 < B_g
  assert partial_fc.num_sampled(0.1, 300, 512) == 300
  with pytest.raises(ValueError, match='sample_rate'):
    partial_fc.num_sampled(0.0, 10, 4)


def test_sampling_keeps_every_positive_redraws_and_skips_padding():
  num_local, num_sample = 40, 12
  labels = jnp.array([3, -1, 7, 3, 39, -1, 0, 21, 22, 23, 24, 25])  # 9 distinct positives
  valid = jnp.arange(num_local) < 36  # rows 36.. are padding (39 is then never a real label)
  labels = jnp.where(labels == 39, 35, labels)
  draws = []
  for step in range(3):
    index, new = partial_fc.sample_classes(jax.random.key(step), labels, valid, num_sample)
    index, new = np.asarray(index), np.asarray(new)
    assert len(set(index)) == num_sample and np.all(np.diff(index) > 0)
    assert set(np.asarray(labels)[np.asarray(labels) >= 0]) <= set(index)
    owned = np.asarray(labels) >= 0
    np.testing.assert_array_equal(index[new[owned]], np.asarray(labels)[owned])
    assert np.all(new[~owned] == -1)
    assert np.all(index < 36)  # enough real rows: padding is never drawn
    draws.append(frozenset(index))
  assert len(set(draws)) > 1  # a fresh draw for a fresh key


def _sampled_problem(num_classes=1000, batch=16, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(num_classes, dim)).astype(np.float32)
  x = rng.normal(size=(batch, dim)).astype(np.float32)
  y = rng.integers(0, num_classes, batch).astype(np.int32)
  return w, x, y


# (labels bytes, rate, chunk, mesh size) -> the jitted value_and_grad of the sampled loss.
_COMPILED: dict[tuple[bytes, float, int, int], Callable[..., Any]] = {}


def _sampled_step(w, x, y, mesh, key, rate=0.25, chunk=0):
  """(loss, sampled mask, (d_w, d_x), margin); compiled once per labels/rate/chunk, so a new key
  (a redraw) reuses the compiled step."""
  mg = margins.get('arcface')
  cache_key = (y.tobytes(), rate, chunk, mesh.size)
  if cache_key not in _COMPILED:

    def fn(w, x, key):
      out = softmax.margin_softmax(
        w, x, jnp.asarray(y), margin=mg, mesh=mesh, sample_rate=rate, key=key, chunk=chunk
      )
      return out.loss, out.sampled

    _COMPILED[cache_key] = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
  (loss, sampled), grads = _COMPILED[cache_key](jnp.asarray(w), jnp.asarray(x), key)
  return loss, np.asarray(sampled), grads, mg


@pytest.mark.parametrize('chunk', [0, 7])
def test_sampled_softmax_is_the_exact_softmax_over_the_sampled_centres(chunk, mesh):
  w, x, y = _sampled_problem()  # 125 centres per device, 31 sampled (int(0.25 · 125))
  loss, sampled, (d_w, d_x), mg = _sampled_step(w, x, y, mesh, jax.random.key(3), chunk=chunk)
  per_device = sampled.reshape(8, -1).sum(axis=1)
  np.testing.assert_array_equal(per_device, 31)
  assert sampled[y].all()  # every positive kept
  # Reference: the plain softmax over the sampled classes only, labels re-indexed into them.
  kept = np.flatnonzero(sampled)
  ref_loss, ref_w, ref_x = reference(w[kept], x, np.searchsorted(kept, y), mg)
  assert_close(loss, ref_loss)
  assert_close(np.asarray(d_w)[kept], ref_w)
  assert_close(d_x, ref_x)
  assert not np.asarray(d_w)[~sampled].any()  # unsampled centres: exactly zero gradient


def test_lazy_sgd_touches_only_sampled_rows_and_equals_dense_on_them(mesh):
  w, x, y = _sampled_problem(seed=1)
  lr, mom, wd = 0.1, 0.9, 5e-4
  lazy_tx = lazy.lazy_sgd(lr, momentum=mom, weight_decay=wd)
  dense_tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mom))
  params = jnp.asarray(w)
  lazy_state, dense_state = lazy_tx.init(params), dense_tx.init(params)
  previous = None
  for step in range(2):
    _, sampled, (d_w, _), _ = _sampled_step(
      np.asarray(params), x, y, mesh, jax.random.key(10 + step)
    )
    lazy_up, new_lazy = lazy_tx.update(d_w, lazy_state, params)
    dense_up, dense_state = dense_tx.update(d_w, dense_state, params)
    lazy_up, trace = np.asarray(lazy_up), np.asarray(new_lazy.trace)
    assert not lazy_up[~sampled].any()  # unsampled centres do not move ...
    np.testing.assert_array_equal(trace[~sampled], np.asarray(lazy_state.trace)[~sampled])
    if previous is not None:  # ... and keep their momentum from the step that sampled them
      kept = previous & ~sampled
      assert kept.any() and trace[kept].any()
    if step == 0:  # on the first step both start from zero momentum: same update where sampled
      np.testing.assert_allclose(lazy_up[sampled], np.asarray(dense_up)[sampled], rtol=1e-6)
    assert np.asarray(dense_up)[~sampled].any()  # dense decays every centre
    params = optax.apply_updates(params, jnp.asarray(lazy_up))
    lazy_state, previous = new_lazy, sampled


def test_make_optimizer_lazy_head_leaves_the_backbone_dense():
  config = load_base(os.path.join(REPO, 'configs', 'base.py')).train
  config.clip_grad_norm = 0.0
  params = {'backbone': {'w': jnp.ones(3)}, 'head': {'weight': jnp.ones((4, 2))}}
  grads = {'backbone': {'w': jnp.ones(3)}, 'head': {'weight': jnp.zeros((4, 2)).at[1].set(1.0)}}
  dense = optim.make_optimizer(config)
  lazy_tx = optim.make_optimizer(config, lazy_head=True)
  d_up, _ = dense.update(grads, dense.init(params), params)
  l_up, _ = lazy_tx.update(grads, lazy_tx.init(params), params)
  np.testing.assert_allclose(l_up['backbone']['w'], d_up['backbone']['w'], rtol=1e-6)
  np.testing.assert_allclose(l_up['head']['weight'][1], d_up['head']['weight'][1], rtol=1e-6)
  assert not np.asarray(l_up['head']['weight'])[[0, 2, 3]].any()
  assert np.asarray(d_up['head']['weight'])[[0, 2, 3]].all()  # weight decay


def _train_state(objective, tx, rng):
  head_params, head_state = objective.init(rng)
  params = {'backbone': {'dense': jnp.arange(6.0)}, 'head': head_params}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats={},
    head_state=head_state,
    opt_state=tx.init(params),
    skipped_steps=jnp.zeros((), jnp.int32),
    consecutive_skips=jnp.zeros((), jnp.int32),
  )


def _objective(mesh, sample_rate=1.0):
  config = load_base(os.path.join(REPO, 'configs', 'base.py'))
  config.head.sample_rate = sample_rate
  return parallel.ModelParallelObjective(
    config.loss, config.head, num_classes=13, embedding_dim=4, mesh=mesh
  )


@pytest.mark.parametrize('lazy_head', [False, True])
def test_state_shardings_split_centres_and_their_optimizer_state(lazy_head, mesh):
  config = load_base(os.path.join(REPO, 'configs', 'base.py')).train
  tx = optim.make_optimizer(config, lazy_head=lazy_head)
  objective = _objective(mesh)
  abstract = jax.eval_shape(lambda r: _train_state(objective, tx, r), jax.random.key(0))
  shardings = parallel.state_shardings(abstract, mesh)
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  split = [jax.tree_util.keystr(path) for path, s in flat if s.spec == P('data')]
  assert "['head']['weight']" in split[0] and len(split) == 2  # the centres and their momentum
  assert all('backbone' not in p for p in split)
  assert objective.num_padded_classes == 128 and abstract.params['head']['weight'].shape == (128, 4)


def test_checkpoint_written_on_8_devices_restores_split_on_4(mesh, tmp_path):
  config = load_base(os.path.join(REPO, 'configs', 'base.py')).train
  tx = optim.make_optimizer(config, lazy_head=True)
  objective = _objective(mesh, sample_rate=0.5)
  init = lambda r: _train_state(objective, tx, r)
  abstract = jax.eval_shape(init, jax.random.key(0))
  state = jax.jit(init, out_shardings=parallel.state_shardings(abstract, mesh))(jax.random.key(0))
  # Give the momentum non-zero rows so the round trip checks real optimizer state.
  grads = jax.tree.map(jnp.ones_like, state.params)
  _, opt_state = jax.jit(tx.update)(grads, state.opt_state, state.params)
  state = state.replace(opt_state=opt_state)
  saver = Checkpointer(str(tmp_path), asynchronous=False)
  saver.save(state, step=1, force=True)
  saver.close()

  mesh4 = parallel.make_mesh(4)
  objective4 = _objective(mesh4, sample_rate=0.5)
  abstract4 = jax.eval_shape(lambda r: _train_state(objective4, tx, r), jax.random.key(0))
  shardings4 = parallel.state_shardings(abstract4, mesh4)
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract4, shardings4
  )
  loader = Checkpointer(str(tmp_path), asynchronous=False)
  restored = loader.restore(target)
  loader.close()
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  weight = restored.params['head']['weight']
  assert weight.sharding.mesh.size == 4 and weight.sharding.spec == P('data')
  assert {s.data.shape for s in weight.addressable_shards} == {(32, 4)}
  lazy_state = restored.opt_state.inner_state[-1].inner_states['lazyx1.0'].inner_state
  trace = lazy_state.trace['head']['weight']
  assert trace.sharding.spec == P('data') and np.asarray(trace).any()


@pytest.mark.parametrize('init_std', [0.01, 0.5])
def test_centre_init_follows_config_and_matches_the_single_device_head(init_std, mesh):
  from arcface_jax import losses

  config = load_base(os.path.join(REPO, 'configs', 'base.py'))
  config.head.init_std = init_std
  sharded = parallel.ModelParallelObjective(
    config.loss, config.head, num_classes=1000, embedding_dim=16, mesh=mesh
  )
  single = losses.build_objective(
    config.loss, num_classes=1000, embedding_dim=16, init_std=init_std
  )
  weight = np.asarray(sharded.init(jax.random.key(4))[0]['weight'])
  expected = np.asarray(single.init(jax.random.key(4))[0]['weight'])
  assert weight.shape[0] == sharded.num_padded_classes > 1000
  np.testing.assert_array_equal(weight[:1000], expected)
  assert not weight[1000:].any()  # padding rows stay zero
  assert abs(expected.std() / init_std - 1) < 0.02  # 16,000 draws: std within 2%
