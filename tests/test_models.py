"""Backbones: published sizes and compute, train/eval modes, bf16 trunk, registry, seed nets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import models

# REFERENCE §6 (millions of parameters) and the published GFLOPs, which count multiply-
# accumulates over the zero-padded input (the ptflops convention of the reference trainer).
PUBLISHED_MILLIONS = {
  'iresnet18': 24.0,
  'iresnet34': 34.1,
  'iresnet50': 43.6,
  'iresnet100': 65.2,
  'iresnet200': 118.8,
}
PUBLISHED_GMACS = {'iresnet18': 2.6, 'iresnet50': 6.3, 'iresnet100': 12.1, 'iresnet200': 23.5}

# Tracing these at 112×112 takes seconds each on a 2-core CPU: `make test` checks them, `make
# test-fast` (no deep models) the same code on the shallower IResNets (18, and 34's size).
DEEP = ('iresnet50', 'iresnet100', 'iresnet200')


def _deep_heavy(names):
  return [pytest.param(n, marks=pytest.mark.heavy) if n in DEEP else n for n in sorted(names)]


def _abstract_variables(model, size=112):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))


@functools.lru_cache()
def _published_variables(name):
  """The variable shapes of registry model `name` at 112×112 (tracing a deep net takes seconds:
  the size and compute tests share one trace)."""
  return _abstract_variables(models.get(name))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _padded_conv(lhs, rhs, window_strides, padding, *args, _conv, **kwargs):
  """lax.conv_general_dilated with the zero padding made explicit (NHWC input)."""
  if isinstance(padding, str):  # only 'VALID' occurs (the GDC head): nothing to make explicit
    return _conv(lhs, rhs, window_strides, padding, *args, **kwargs)
  pads = [(0, 0)] + [tuple(p) for p in padding] + [(0, 0)]
  return _conv(jnp.pad(lhs, pads), rhs, window_strides, 'VALID', *args, **kwargs)


def _forward_flops(model, monkeypatch, size=112, pad_taps=True, variables=None):
  """XLA's cost analysis of the lowered forward pass (batch 1), never run."""
  if pad_taps:
    # XLA's HloCostAnalysis skips taps that fall on the padding; the published figures count
    # them, so the test feeds XLA convolutions over explicitly padded inputs.
    monkeypatch.setattr(
      jax.lax,
      'conv_general_dilated',
      functools.partial(_padded_conv, _conv=jax.lax.conv_general_dilated),
    )
  if variables is None:
    variables = _abstract_variables(model, size)
  lowered = jax.jit(lambda v, x: model.apply(v, x)).lower(
    variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  )
  return lowered.cost_analysis()['flops']


@pytest.mark.parametrize('name', _deep_heavy(PUBLISHED_MILLIONS))
def test_parameter_counts_within_one_percent_of_published(name):
  count = _count(_published_variables(name)['params']) / 1e6
  assert abs(count - PUBLISHED_MILLIONS[name]) / PUBLISHED_MILLIONS[name] < 0.01


@pytest.mark.parametrize('name', _deep_heavy(PUBLISHED_GMACS))
def test_forward_macs_within_five_percent_of_published(name, monkeypatch):
  gmacs = _forward_flops(models.get(name), monkeypatch, variables=_published_variables(name)) / 2e9
  assert abs(gmacs - PUBLISHED_GMACS[name]) / PUBLISHED_GMACS[name] < 0.05


@pytest.mark.heavy  # IResNet-50, lowered twice
def test_xla_cost_analysis_skips_padding_taps(monkeypatch):
  # Why the test above pads explicitly: without it IResNet-50 counts ~7% fewer flops, mostly
  # from the 3×3 convs on 7×7 and 14×14 maps where a large share of taps land on padding.
  model, variables = models.get('iresnet50'), _published_variables('iresnet50')
  implicit = _forward_flops(model, monkeypatch, pad_taps=False, variables=variables)
  explicit = _forward_flops(model, monkeypatch, variables=variables)
  assert 0.90 < implicit / explicit < 0.96


def test_mobilefacenet_size_and_compute_match_the_paper(monkeypatch):
  # Paper: 0.99M parameters with a 128-d embedding, 221M multiply-adds (0.45 GFLOPs).
  model = models.get('mobilefacenet', embedding_dim=128)
  millions = _count(_abstract_variables(model)['params']) / 1e6
  assert abs(millions - 0.99) / 0.99 < 0.02
  gflops = _forward_flops(model, monkeypatch) / 1e9
  assert abs(gflops - 0.45) / 0.45 < 0.05


def test_resnet50_is_the_standard_bottleneck_network():
  params = _abstract_variables(models.get('resnet50'))['params']
  # torchvision's ResNet-50 has 25,557,032 parameters with its 2048→1000 FC (2,049,000);
  # here the FC is 2048→512 and the bottleneck convs carry no bias.
  trunk = 25_557_032 - 2_049_000
  assert _count(params) == trunk + 2048 * 512 + 512


def _images(n=4, size=16, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3))


@functools.lru_cache()
def _tiny_variables(size):
  # Jitted: one compilation instead of one per layer's operations (eager dispatch compiles each).
  return jax.jit(models.get('iresnet_tiny', embedding_dim=16).init)(
    jax.random.PRNGKey(0), _images(size=size)
  )


def _tiny_and_variables(dtype='float32', size=16):
  model = models.get('iresnet_tiny', embedding_dim=16, dtype=dtype)
  return model, _tiny_variables(size), _images(size=size)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not_need_them_mutable():
  model, variables, images = _tiny_and_variables()
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  embeddings, updates = train(variables, images)
  assert embeddings.shape == (4, 16) and embeddings.dtype == jnp.float32
  changed = jax.tree.map(
    lambda a, b: not np.array_equal(a, b), updates['batch_stats'], variables['batch_stats']
  )
  assert all(jax.tree.leaves(changed))
  evaluated = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert evaluated.shape == (4, 16)
  # Eval uses running statistics, so it differs from the batch-statistics forward.
  assert not np.allclose(evaluated, embeddings, atol=1e-3)


def test_head_batch_norm_has_no_scale_and_prelu_starts_at_a_quarter():
  _, variables, _ = _tiny_and_variables()
  params = variables['params']
  head = params[
    max((k for k in params if k.startswith('BatchNorm_')), key=lambda k: int(k.split('_')[1]))
  ]
  assert set(head) == {'bias'}
  np.testing.assert_array_equal(params['PReLU_0']['slope'], np.full(16, 0.25, np.float32))


def test_dropout_acts_only_in_training():
  model = models.get('iresnet_tiny', embedding_dim=16, dropout=0.5)
  images = _images()
  variables = _tiny_variables(16)
  train = jax.jit(
    lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}, mutable=['batch_stats'])
  )
  run = lambda key: train(variables, images, key)[0]
  assert not np.allclose(run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(
    jax.jit(model.apply)(variables, images),
    jax.jit(models.get('iresnet_tiny', embedding_dim=16).apply)(variables, images),
  )


@pytest.mark.parametrize('size', [32, 48])
def test_head_input_follows_the_feature_map(size):
  model = models.get('iresnet_tiny', embedding_dim=8)
  variables = _abstract_variables(model, size)
  kernel = variables['params'][max((k for k in variables['params'] if k.startswith('Dense')))]
  assert kernel['kernel'].shape == ((size // 16) ** 2 * 128, 8)


def test_bf16_trunk_agrees_with_fp32_to_bf16_precision():
  fp32, variables, images = _tiny_and_variables(size=32)
  bf16 = models.get('iresnet_tiny', embedding_dim=16, dtype='bfloat16')
  a = np.asarray(jax.jit(fp32.apply)(variables, images))
  b = jax.jit(bf16.apply)(variables, images)
  assert b.dtype == jnp.float32  # the embedding head stays fp32
  b = np.asarray(b)
  cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  # bf16 keeps 8 significant bits (relative step 2^-8 ≈ 0.4%); a dozen layers of it stay
  # within a few percent of the fp32 result, far from an unrelated vector.
  assert np.all(cosine > 0.999)
  assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 0.03
  assert not np.array_equal(a, b)


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)  # ClosedJaxpr → Jaxpr
      if hasattr(inner, 'eqns'):
        yield from _equations(inner)


def test_bf16_switch_puts_convolutions_in_bf16_and_the_head_in_fp32():
  _, variables, images = _tiny_and_variables()
  bf16 = models.get('iresnet_tiny', embedding_dim=16, dtype='bfloat16')
  jaxpr = jax.make_jaxpr(lambda v, x: bf16.apply(v, x, train=True, mutable=['batch_stats']))(
    variables, images
  )
  eqns = list(_equations(jaxpr.jaxpr))  # the convs sit inside cpu_conv's custom_vjp calls
  convs = [e for e in eqns if e.primitive.name == 'conv_general_dilated']
  dots = [e for e in eqns if e.primitive.name == 'dot_general']
  assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)
  assert len(dots) == 1 and dots[0].outvars[0].aval.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


@pytest.mark.parametrize(
  'name', ['mobilefacenet', 'mobilefacenet_x2', 'resnet50', 'small_cnn', 'mini_network']
)
def test_other_backbones_embed_and_train(name):
  model = models.get(name, embedding_dim=3, dropout=0.1)
  images = _images(n=2, size=32)

  def init_and_apply(images):
    variables = model.init(jax.random.PRNGKey(0), images)
    out, state = model.apply(
      variables,
      images,
      train=True,
      rngs={'dropout': jax.random.PRNGKey(3)},
      mutable=['batch_stats'],
    )
    return out, state, model.apply(variables, images)

  # The two deep nets are only traced (compiling them would dominate the suite's time on a
  # 2-core machine); the small ones also run.
  deep = name in ('mobilefacenet', 'mobilefacenet_x2', 'resnet50')
  out, state, evaluated = (
    jax.eval_shape(init_and_apply, images) if deep else jax.jit(init_and_apply)(images)
  )
  assert out.shape == evaluated.shape == (2, 3)
  assert out.dtype == evaluated.dtype == jnp.float32
  if not deep:
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(evaluated))
  # Every net but the batch-norm-free MiniNetwork keeps running statistics.
  assert bool(state.get('batch_stats')) == (name != 'mini_network')


def test_mini_network_has_kaiming_normal_weights():
  model = models.get('mini_network', embedding_dim=64)
  params = model.init(jax.random.PRNGKey(0), _images(n=1, size=32))['params']
  kernel = np.asarray(params['Conv_2']['kernel'])  # 3·3·64 fan-in, 128 outputs
  assert abs(kernel.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.03
  # Untruncated (PyTorch's kaiming_normal_): some draws lie beyond two standard deviations.
  assert np.mean(np.abs(kernel) > 2 * kernel.std()) > 0.03
  np.testing.assert_array_equal(params['Conv_2']['bias'], 0)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="'iresnet51'.*iresnet50"):
    models.get('iresnet51')


def test_unknown_dtype_is_rejected():
  with pytest.raises(ValueError, match='float16'):
    models.get('iresnet18', dtype='float16')


def test_registry_names():
  assert {
    'iresnet18',
    'iresnet34',
    'iresnet50',
    'iresnet100',
    'iresnet200',
    'iresnet_tiny',
    'mobilefacenet',
    'resnet50',
    'small_cnn',
    'mini_network',
  } <= set(models.names())
