"""XLA:CPU options of the train step and the face detector: dense convolutions leave YNNPACK,
values stay the same."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arcface_jax import compiler_options


def _conv_loss(x, w):
  layout = ('NHWC', 'HWIO', 'NHWC')
  y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=layout)
  return jnp.sum(jnp.tanh(y) ** 2)


def _ynn_fusions_with_convolutions(hlo: str) -> int:
  """How many YNNPACK fusions run a convolution (each fusion calls one computation by name)."""
  computations = dict(re.findall(r'^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo, re.S | re.M))
  called = re.findall(r'calls=%([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo)
  return sum(' convolution(' in computations.get(name, '') for name in called)


def test_dense_convolutions_leave_ynnpack_with_the_same_values():
  options = compiler_options.for_platform('cpu')
  assert options and 'INDIVIDUAL_CONVOLUTION' not in options['xla_cpu_experimental_ynn_fusion_type']
  rng = np.random.default_rng(0)
  # 64 channels: below some size XLA keeps even the default's convolutions to itself.
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 64, 64)) * 0.05, jnp.float32)
  grad = jax.grad(_conv_loss, argnums=(0, 1))
  default = jax.jit(grad).lower(x, w).compile()
  tuned = jax.jit(grad, compiler_options=options).lower(x, w).compile()
  assert _ynn_fusions_with_convolutions(default.as_text()) > 0  # the default: YNNPACK's
  assert _ynn_fusions_with_convolutions(tuned.as_text()) == 0
  with jax.enable_x64(True):
    exact = jax.grad(_conv_loss, argnums=(0, 1))(x.astype(jnp.float64), w.astype(jnp.float64))
  for got, want in zip(tuned(x, w), exact):
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_other_platforms_and_the_default_backend():
  assert compiler_options.for_platform('gpu') == {} and compiler_options.for_platform('tpu') == {}
  assert compiler_options.for_devices() == compiler_options.for_platform(jax.default_backend())
  assert compiler_options.for_devices(jax.devices()) == compiler_options.for_platform('cpu')


def test_a_jaxlib_without_the_option_compiles_with_defaults_once_warned(monkeypatch, caplog):
  monkeypatch.setattr(compiler_options, '_CPU_OPTIONS', {'xla_cpu_no_such_option': 'true'})
  compiler_options.for_platform.cache_clear()
  try:
    with caplog.at_level(logging.WARNING):
      assert compiler_options.for_platform('cpu') == {}
      assert compiler_options.for_platform('cpu') == {}  # cached: one warning
  finally:
    compiler_options.for_platform.cache_clear()
  warnings = [r for r in caplog.records if 'xla_cpu_no_such_option' in r.getMessage()]
  assert len(warnings) == 1


def test_the_face_detector_nets_compile_with_the_options():
  from arcface_jax.faces import mtcnn_nets

  crops = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 3)).astype(np.float32)
  variables = mtcnn_nets.load_weights('onet')
  forward = mtcnn_nets.onet_forward
  default = jax.jit(forward.__wrapped__).lower(variables, crops).compile()
  tuned = forward.jitted().lower(variables, crops).compile()
  # XLA's defaults give YNNPACK (almost) all four convolutions; under the options it keeps at
  # most the 2×2 one on a 3×3 map (which its product fusions take as well).
  assert _ynn_fusions_with_convolutions(default.as_text()) >= 3
  assert _ynn_fusions_with_convolutions(tuned.as_text()) <= 1
  for got, want in zip(forward(variables, crops), default(variables, crops)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
