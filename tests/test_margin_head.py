"""margin_head: the one-kernel dense head against autodiff of the plain composition in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import losses, margin_head, margins

# Each branch of CombinedMargin.target_cos: the m1 = 1 angular curve with its fallback, the pure
# additive one, easy_margin, straight-through, and m1 ≠ 1 through arccos.
MARGINS = [
  ('arcface', {}),
  ('cosface', {}),
  ('arcface', {'easy_margin': True}),
  ('arcface', {'straight_through': True}),
  ('combined', {'m1': 1.35, 'm2': 0.0, 'm3': 0.0}),
]


def _reference(weight, embeddings, labels, margin):
  cos = losses.l2_normalize(embeddings) @ losses.l2_normalize(weight).T
  return losses.margin_softmax_cross_entropy(margin(cos, labels), labels)


@pytest.mark.parametrize('name,params', MARGINS)
def test_value_and_gradients_match_autodiff_in_float64(name, params):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 40, 12)
  labels[3] = -1  # a row whose target is elsewhere: no loss, not counted
  margin = margins.get(name, **params)
  with jax.enable_x64(True):
    weight = jnp.asarray(rng.normal(size=(40, 8)) * 0.3)
    emb = jnp.asarray(rng.normal(size=(12, 8)) * 5.0)
    y = jnp.asarray(labels)
    expected = jax.value_and_grad(_reference, (0, 1))(weight, emb, y, margin)
    got = jax.value_and_grad(lambda w, x: margin_head.margin_head(x, w, y, margin)[0], (0, 1))(
      weight, emb
    )
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
    for g, e in zip(got[1], expected[1]):
      np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
    cos = losses.l2_normalize(emb) @ losses.l2_normalize(weight).T
    metrics = margin_head.margin_head(emb, weight, y, margin)[1]
    for key, value in losses.angle_metrics(cos, y).items():
      np.testing.assert_allclose(metrics[key], value, rtol=1e-9)


def test_objective_uses_it_and_matches_the_general_path():
  rng = np.random.default_rng(1)
  emb = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 30, 6))
  objective = losses.Objective(num_classes=30, embedding_dim=8, margin=margins.get('arcface'))
  params, state = objective.init(jax.random.key(0))
  loss, _, metrics = objective(params, state, emb, labels, jnp.int32(0))
  reference = _reference(params['weight'], emb, labels, objective.margin)
  np.testing.assert_allclose(loss, reference, rtol=1e-5)
  assert set(metrics) >= {
    'loss',
    'softmax_loss',
    'theta_target_deg',
    'cos_target',
    'cos_hardest_negative',
  }


def test_float32_with_bf16_inputs_and_finite_at_cos_plus_minus_one():
  # Embeddings equal to (and opposite to) centres: cos θ = ±1 exactly, the margin's edge cases.
  rng = np.random.default_rng(2)
  weight = rng.normal(size=(20, 8)).astype(np.float32)
  emb = np.concatenate([weight[:3] * 4.0, -weight[3:6]]).astype(np.float32)
  labels = jnp.asarray([0, 1, 2, 3, 4, 5])
  for margin in (margins.get('arcface'), margins.get('combined', m1=1.35, m2=0.0, m3=0.0)):
    for dtype in (jnp.float32, jnp.bfloat16):
      w, x = jnp.asarray(weight, dtype), jnp.asarray(emb, dtype)
      (loss, metrics), grads = jax.value_and_grad(
        lambda w, x: margin_head.margin_head(x, w, labels, margin), (0, 1), has_aux=True
      )(w, x)
      assert loss.dtype == jnp.float32 and metrics['cos_target'].dtype == jnp.float32
      assert grads[0].dtype == dtype and grads[1].dtype == dtype
      assert np.isfinite(float(loss))
      assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def test_rejects_what_it_cannot_compute():
  with pytest.raises(ValueError, match='CombinedMargin'):
    margin_head.margin_head(
      jnp.ones((2, 4)), jnp.ones((3, 2, 4)), jnp.zeros(2, jnp.int32), margins.get('arcface')
    )
  with pytest.raises(ValueError, match='do not match'):
    margin_head.margin_head(
      jnp.ones((2, 5)), jnp.ones((3, 4)), jnp.zeros(2, jnp.int32), margins.get('arcface')
    )


@pytest.mark.parametrize('name,params', MARGINS[::2])
def test_per_device_share_matches_autodiff_of_local_stats(name, params):
  from arcface_jax.parallel import chunked, fused

  rng = np.random.default_rng(3)
  margin = margins.get(name, **params)
  with jax.enable_x64(True):
    x_n = chunked.l2_normalize(jnp.asarray(rng.normal(size=(10, 6))))
    w = jnp.asarray(rng.normal(size=(15, 6)))
    valid = jnp.arange(15) < 13  # two padding columns
    labels = jnp.asarray(rng.integers(-1, 13, 10))  # −1: the target lives on another device
    g_lse, g_target = jnp.asarray(rng.normal(size=10)), jnp.asarray(rng.normal(size=10))

    def objective(stats_fn):
      def value(x, wt):
        lse, target, _, _ = stats_fn(x, wt, labels, valid, margin)
        return jnp.sum(g_lse * lse) + jnp.sum(g_target * target)

      return jax.value_and_grad(value, (0, 1))

    expected = objective(chunked.local_stats)(x_n, w)
    got = objective(fused.fused_local_stats)(x_n, w)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
    for g, e in zip(got[1], expected[1]):
      np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
    for g, e in zip(
      fused.fused_local_stats(x_n, w, labels, valid, margin),
      chunked.local_stats(x_n, w, labels, valid, margin),
    ):
      np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)
