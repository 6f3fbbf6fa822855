"""The CPU conv formulations against lax.conv_general_dilated: values and gradients in fp64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from arcface_jax.models import cpu_conv

LAYOUT = ('NHWC', 'HWIO', 'NHWC')


def _reference(x, w, strides, padding, groups):
  return lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=LAYOUT, feature_group_count=groups
  )


def _assert_vjp_matches(ours, ref, x, w, rng):
  """Under differentiation the custom formulation runs: its forward and both gradients equal
  the reference's (in float64), and they are the derivatives of its own values."""
  y, vjp = jax.vjp(ours, x, w)
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
  dy = jnp.asarray(rng.normal(size=y.shape))
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  check_grads(ours, (x, w), order=1, modes=['rev'])


# (input side, channels, kernel, stride, padding): 3×3 same-size and strided on even and odd
# sides (the strided slice must stop where XLA's window does), the GDC head's k×k VALID, and
# asymmetric padding and a stride equal to the kernel (the weight gradient's phases and shifts),
# and a padded window that yields one output pixel (the single-window gradients).
CASES = [
  (6, 3, 3, 1, ((1, 1), (1, 1))),
  (6, 3, 3, 2, ((1, 1), (1, 1))),
  (7, 2, 3, 2, ((1, 1), (1, 1))),
  (5, 4, 5, 1, 'VALID'),
  (4, 2, 3, 1, ((0, 2), (1, 0))),
  (7, 2, 3, 2, ((0, 2), (1, 0))),
  (8, 2, 3, 3, ((1, 1), (0, 1))),
  (3, 2, 5, 2, ((1, 1), (2, 0))),
]


@pytest.mark.parametrize('side,channels,kernel,stride,padding', CASES)
def test_values_and_gradients_match_lax_in_float64(side, channels, kernel, stride, padding):
  with jax.enable_x64(True):
    rng = np.random.default_rng(side * 10 + kernel + stride)
    x = jnp.asarray(rng.normal(size=(2, side, side, channels)))
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, channels)))
    dims = lax.conv_dimension_numbers(x.shape, w.shape, LAYOUT)  # as Flax passes them
    ours = lambda x, w: cpu_conv.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=dims, feature_group_count=channels
    )
    ref = lambda x, w: _reference(x, w, (stride, stride), padding, channels)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-12, atol=1e-12)
    _assert_vjp_matches(ours, ref, x, w, rng)


# (input side, cin, cout, stride): 1×1 convs, stride 2 on even and odd sides.
POINTWISE = [(5, 3, 4, 1), (6, 3, 2, 2), (7, 2, 3, 2)]


@pytest.mark.parametrize('side,cin,cout,stride', POINTWISE)
def test_pointwise_values_and_gradients_match_lax_in_float64(side, cin, cout, stride):
  with jax.enable_x64(True):
    rng = np.random.default_rng(side + 10 * stride)
    x = jnp.asarray(rng.normal(size=(2, side, side, cin)))
    w = jnp.asarray(rng.normal(size=(1, 1, cin, cout)))
    dims = lax.conv_dimension_numbers(x.shape, w.shape, LAYOUT)
    ours = lambda x, w: cpu_conv.conv_general_dilated(
      x, w, (stride, stride), ((0, 0), (0, 0)), dimension_numbers=dims
    )
    ref = lambda x, w: _reference(x, w, (stride, stride), ((0, 0), (0, 0)), 1)
    assert 'custom_vjp' in str(jax.make_jaxpr(ours)(x, w))
    _assert_vjp_matches(ours, ref, x, w, rng)


def test_the_exported_forward_is_the_convolution_primitive():
  # The ONNX export reads the jaxpr inside convolution_primitives(): it must hold the conv.
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2))
  depthwise = lambda x, w: cpu_conv.depthwise_conv(x, w, (1, 1), ((1, 1), (1, 1)))
  with cpu_conv.convolution_primitives():
    jaxpr = str(jax.make_jaxpr(depthwise)(x, w))
  assert 'conv_general_dilated' in jaxpr and 'platform_index' not in jaxpr
  assert 'conv_general_dilated' not in str(
    jax.make_jaxpr(jax.grad(lambda w: depthwise(x, w).sum()))(w)
  )


@pytest.mark.parametrize('side,channels,kernel,stride,padding', CASES)
def test_the_cpu_forward_is_the_taps_sum_with_the_same_values(
  side, channels, kernel, stride, padding
):
  # XLA:CPU's depthwise convolution is ~10x slower than the taps: evaluation and inference on
  # CPU compile the taps, with lax's values.
  rng = np.random.default_rng(side + kernel)
  x = jnp.asarray(rng.normal(size=(2, side, side, channels)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, channels)), jnp.float32)
  pads = cpu_conv._explicit_padding(padding)
  forward = jax.jit(lambda x, w: cpu_conv.depthwise_conv(x, w, (stride, stride), pads))
  assert 'convolution' not in forward.lower(x, w).compile().as_text()
  np.testing.assert_allclose(
    forward(x, w), _reference(x, w, (stride, stride), padding, channels), rtol=1e-5, atol=1e-5
  )


def test_bfloat16_accumulates_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.bfloat16)
  pads = ((1, 1), (1, 1))
  exact = _reference(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), pads, 4)
  y, vjp = jax.vjp(lambda x, w: cpu_conv.depthwise_conv(x, w, (1, 1), pads), x, w)
  assert y.dtype == jnp.bfloat16
  # One bf16 rounding of an fp32 sum, not nine.
  np.testing.assert_allclose(
    y.astype(jnp.float32), exact.astype(jnp.bfloat16).astype(jnp.float32), rtol=0, atol=0
  )
  dx, dw = vjp(jnp.ones_like(y))
  assert dx.dtype == dw.dtype == jnp.bfloat16


def test_other_convolutions_go_to_lax_unchanged():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float32)
  # Two channels per group (mobilefacenet_x2's stem), a dense conv (XLA's own is fast when
  # compiled with arcface_jax.compiler_options), a dilated dense conv and a dilated depthwise one.
  for w, groups, dilation in (
    (rng.normal(size=(3, 3, 2, 4)), 2, (1, 1)),
    (rng.normal(size=(3, 3, 4, 5)), 1, (1, 1)),
    (rng.normal(size=(3, 3, 4, 5)), 1, (2, 2)),
    (rng.normal(size=(3, 3, 1, 4)), 4, (2, 2)),
  ):
    w = jnp.asarray(w, jnp.float32)
    got = jax.make_jaxpr(
      lambda w, dilation=dilation, groups=groups: cpu_conv.conv_general_dilated(
        x,
        w,
        (1, 1),
        ((1, 1), (1, 1)),
        rhs_dilation=dilation,
        dimension_numbers=LAYOUT,
        feature_group_count=groups,
      )
    )(w)
    assert 'custom_vjp' not in str(got)


def test_flax_conv_with_the_hook_keeps_its_parameters_and_outputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  plain = nn.Conv(4, (3, 3), strides=2, padding=1, feature_group_count=4, use_bias=False)
  hooked = plain.clone(conv_general_dilated=cpu_conv.conv_general_dilated)
  variables = plain.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(hooked.init(jax.random.PRNGKey(1), x)) == jax.tree.structure(variables)
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x) ** 2)
  np.testing.assert_allclose(
    hooked.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-6
  )  # on CPU the hooked forward is the taps sum: the same values, summed in another order
  g_hooked, g_plain = jax.grad(loss(hooked))(variables), jax.grad(loss(plain))(variables)
  np.testing.assert_allclose(
    g_hooked['params']['kernel'], g_plain['params']['kernel'], rtol=1e-5, atol=1e-5
  )
