"""The fused BatchNorm against Flax's: same variables, values, statistics and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from arcface_jax.models import batch_norm

SETTINGS = dict(momentum=0.9, epsilon=1e-5)


def _loss_and_updates(module, params, stats, x):
  y, updates = module.apply(
    {'params': params, 'batch_stats': stats}, x, use_running_average=False, mutable=['batch_stats']
  )
  return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), updates


@pytest.mark.parametrize(
  'shape,options',
  [
    ((3, 4, 5, 6), {}),
    ((7, 5), {}),
    ((2, 3, 3, 4), {'use_scale': False}),
    ((5, 3), {'use_bias': False}),
  ],
)
def test_training_pass_equals_flax_in_float64(shape, options):
  with jax.enable_x64(True):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape) * 2 + 3)
    ours = batch_norm.BatchNorm(**SETTINGS, **options)
    flax_bn = nn.BatchNorm(**SETTINGS, **options)
    variables = flax_bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
    assert jax.tree.map(
      jnp.shape, ours.init(jax.random.PRNGKey(0), x, use_running_average=False)
    ) == (jax.tree.map(jnp.shape, variables))
    params = jax.tree.map(lambda p: p + rng.normal(size=p.shape), variables['params'])
    stats = jax.tree.map(lambda s: s + rng.uniform(size=s.shape), variables['batch_stats'])
    got = jax.value_and_grad(_loss_and_updates, argnums=(1, 3), has_aux=True)(
      ours, params, stats, x
    )
    want = jax.value_and_grad(_loss_and_updates, argnums=(1, 3), has_aux=True)(
      flax_bn, params, stats, x
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11), got, want)


def test_normalize_batch_gradients_are_its_own_derivatives():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    x, scale, bias = (jnp.asarray(rng.normal(size=s)) for s in ((4, 3, 2, 5), (5,), (5,)))
    check_grads(
      lambda x, s, b: batch_norm.normalize_batch(x, s, b, 1e-5, jnp.dtype(jnp.float64))[0],
      (x, scale, bias),
      order=1,
      modes=['rev'],
    )


def _count_primitive(jaxpr, name: str) -> int:
  from jax.extend.core import jaxprs_in_params

  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    count += sum(_count_primitive(inner, name) for inner in jaxprs_in_params(eqn.params))
  return count


def test_a_training_step_reduces_each_statistic_once():
  """Forward: Σx and Σx² (the running averages reuse them); backward: Σdy and Σdy·(x − mean);
  and the loss's own sum. Statistics computed again for the running averages would be two more
  reductions for XLA to merge."""
  x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 3, 3, 8)), jnp.float32)
  module = batch_norm.BatchNorm(**SETTINGS)
  variables = module.init(jax.random.PRNGKey(0), x, use_running_average=False)
  step = lambda params, x: jax.grad(_loss_and_updates, argnums=(1, 3), has_aux=True)(
    module, params, variables['batch_stats'], x
  )
  jaxpr = jax.make_jaxpr(step)(variables['params'], x)
  assert _count_primitive(jaxpr.jaxpr, 'reduce_sum') == 2 + 2 + 1


def test_evaluation_and_unfused_options_are_flax_itself():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(4, 3, 3, 2)), jnp.float32)
  variables = nn.BatchNorm(**SETTINGS).init(jax.random.PRNGKey(0), x, use_running_average=False)
  variables = jax.tree.map(lambda v: v + 0.5, variables)
  for kwargs in ({'use_running_average': True}, {'use_running_average': False, 'mask': x > 0}):
    ours = batch_norm.BatchNorm(**SETTINGS).apply(variables, x, mutable=['batch_stats'], **kwargs)
    want = nn.BatchNorm(**SETTINGS).apply(variables, x, mutable=['batch_stats'], **kwargs)
    jax.tree.map(np.testing.assert_array_equal, ours, want)


def test_bfloat16_input_keeps_float32_statistics_and_gradients():
  rng = np.random.default_rng(3)
  x64 = rng.normal(size=(8, 4, 4, 16)) * 3 + 2
  x = jnp.asarray(x64, jnp.bfloat16)
  module = batch_norm.BatchNorm(**SETTINGS, dtype=jnp.bfloat16)
  variables = module.init(jax.random.PRNGKey(0), x, use_running_average=False)
  (loss, updates), (grad_params, grad_x) = jax.value_and_grad(
    _loss_and_updates, argnums=(1, 3), has_aux=True
  )(module, variables['params'], variables['batch_stats'], x)
  y, _ = module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16 and grad_x.dtype == jnp.bfloat16
  assert updates['batch_stats']['mean'].dtype == jnp.float32
  assert grad_params['scale'].dtype == jnp.float32
  with jax.enable_x64(True):  # the same layer on the bf16 values, exactly
    exact = jnp.asarray(np.asarray(x, np.float64))
    flax_bn = nn.BatchNorm(**SETTINGS)
    v64 = flax_bn.init(jax.random.PRNGKey(0), exact, use_running_average=False)
    y64, _ = flax_bn.apply(v64, exact, use_running_average=False, mutable=['batch_stats'])
    _, (g64, gx64) = jax.value_and_grad(_loss_and_updates, argnums=(1, 3), has_aux=True)(
      flax_bn, v64['params'], v64['batch_stats'], exact
    )
  np.testing.assert_allclose(np.asarray(y, np.float64), y64, atol=2e-2)  # one bf16 step of ~4
  # dy is itself bf16 (the cotangent of a bf16 output): gradients agree to bf16's precision of
  # their largest term.
  for got, want in (
    (grad_params['bias'], g64['bias']),
    (grad_params['scale'], g64['scale']),
    (grad_x, gx64),
  ):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-2 * np.abs(want).max())


@pytest.mark.parametrize('train', [True, False])
def test_interceptors_see_one_call_per_layer(train):
  # The ONNX importer and freezing walk the model through nn.intercept_methods.
  x = jnp.ones((2, 3))
  module = batch_norm.BatchNorm(**SETTINGS)
  variables = module.init(jax.random.PRNGKey(0), x, use_running_average=False)
  seen = []

  def record(next_fun, args, kwargs, context):
    seen.append((type(context.module).__name__, context.method_name))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    module.apply(variables, x, use_running_average=not train, mutable=['batch_stats'])
  assert seen == [('BatchNorm', '__call__')]
