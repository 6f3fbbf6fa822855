"""The three MTCNN networks (P-Net, R-Net, O-Net) as Flax modules, and their published weights.

Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks" (2016). The weights are the published ones as shipped in the `mtcnn` package on PyPI
(MIT, 1.0.0, `mtcnn/assets/weights/{pnet,rnet,onet}.lz4`: joblib pickles of Keras weight lists,
lz4-compressed). They are read with joblib and lz4 alone: the `mtcnn` package is located without
being imported (its `__init__` imports TensorFlow). They are bit for bit the arrays facenet-pytorch
2.6.0 ships as `facenet_pytorch/data/*.pt` (checked in tests/test_mtcnn_reference.py).

Layouts follow facenet-pytorch's networks: NHWC images normalised as (x - 127.5) / 128, VALID
convolutions, max pools with ceil rounding (a window hanging over the bottom/right edge pools the
pixels it covers), PReLU with one slope per channel, and the dense layers flatten (N, W, H, C)
(the transposed order the weights were trained with).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arcface_jax import compiler_options

WEIGHTS_PACKAGE = 'mtcnn==1.0.0'
_INSTALL_HINT = (
  f"install the `mtcnn` package: pip install '{WEIGHTS_PACKAGE}' (it needs only "
  "joblib and lz4; TensorFlow is not needed)"
)

# The Keras weight lists in the .lz4 files, in file order: (layer name, kind).
_KERAS_LAYOUT = {
  'pnet': [
    ('conv1', 'kernel'),
    ('conv1', 'bias'),
    ('prelu1', 'alpha'),
    ('conv2', 'kernel'),
    ('conv2', 'bias'),
    ('prelu2', 'alpha'),
    ('conv3', 'kernel'),
    ('conv3', 'bias'),
    ('prelu3', 'alpha'),
    ('box', 'kernel'),
    ('box', 'bias'),
    ('face', 'kernel'),
    ('face', 'bias'),
  ],
  'rnet': [
    ('conv1', 'kernel'),
    ('conv1', 'bias'),
    ('prelu1', 'alpha'),
    ('conv2', 'kernel'),
    ('conv2', 'bias'),
    ('prelu2', 'alpha'),
    ('conv3', 'kernel'),
    ('conv3', 'bias'),
    ('prelu3', 'alpha'),
    ('dense4', 'kernel'),
    ('dense4', 'bias'),
    ('prelu4', 'alpha'),
    ('box', 'kernel'),
    ('box', 'bias'),
    ('face', 'kernel'),
    ('face', 'bias'),
  ],
  'onet': [
    ('conv1', 'kernel'),
    ('conv1', 'bias'),
    ('prelu1', 'alpha'),
    ('conv2', 'kernel'),
    ('conv2', 'bias'),
    ('prelu2', 'alpha'),
    ('conv3', 'kernel'),
    ('conv3', 'bias'),
    ('prelu3', 'alpha'),
    ('conv4', 'kernel'),
    ('conv4', 'bias'),
    ('prelu4', 'alpha'),
    ('dense5', 'kernel'),
    ('dense5', 'bias'),
    ('prelu5', 'alpha'),
    ('box', 'kernel'),
    ('box', 'bias'),
    ('landmarks', 'kernel'),
    ('landmarks', 'bias'),
    ('face', 'kernel'),
    ('face', 'bias'),
  ],
}


class MTCNNWeightsError(RuntimeError):
  """The published MTCNN weight files cannot be found or read."""


def weights_dir() -> str:
  """The folder holding pnet.lz4, rnet.lz4 and onet.lz4 inside the installed `mtcnn` package."""
  # find_spec on a top-level name locates the package without running its __init__.
  spec = importlib.util.find_spec('mtcnn')
  if spec is None or not spec.submodule_search_locations:
    raise MTCNNWeightsError(f'the MTCNN weights are not installed: {_INSTALL_HINT}')
  return os.path.join(list(spec.submodule_search_locations)[0], 'assets', 'weights')


def load_weights(net: str, directory: str | None = None) -> dict:
  """Flax variables {'params': ...} of `net` ('pnet', 'rnet' or 'onet') from its .lz4 file."""
  import joblib  # pylint: disable=import-outside-toplevel  (only needed once, at load time)

  path = os.path.join(directory or weights_dir(), f'{net}.lz4')
  if not os.path.isfile(path):
    raise MTCNNWeightsError(f'MTCNN weight file {path} is missing: {_INSTALL_HINT}')
  try:
    arrays = joblib.load(path)
  except Exception as error:  # a truncated or foreign file: say which and how to fix it
    raise MTCNNWeightsError(
      f'cannot read MTCNN weight file {path} ({error}); reinstall it: {_INSTALL_HINT}'
    ) from error
  layout = _KERAS_LAYOUT[net]
  if not isinstance(arrays, list) or len(arrays) != len(layout):
    raise MTCNNWeightsError(
      f'{path} does not hold the {len(layout)} arrays of {net}; {_INSTALL_HINT}'
    )
  params: dict = {}
  for (layer, kind), array in zip(layout, arrays):
    array = np.asarray(array, np.float32)
    if kind == 'alpha':  # Keras keeps PReLU slopes as (1, 1, C) or (C,)
      array = array.reshape(-1)
    params.setdefault(layer, {})[kind] = array
  return {'params': params}


class PReLU(nn.Module):
  """max(x, 0) + alpha * min(x, 0) with one learned slope per channel (the last axis)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha * x)


def max_pool_ceil(x: jax.Array, window: int, stride: int) -> jax.Array:
  """Max pool over H and W with ceil rounding: windows may hang over the bottom/right edge."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    pads.append((0, (out - 1) * stride + window - size))
  return jax.lax.reduce_window(
    x,
    -jnp.inf,
    jax.lax.max,
    (1, window, window, 1),
    (1, stride, stride, 1),
    [(0, 0), *pads, (0, 0)],
  )


# On a photo-sized input XLA:CPU runs a 3×3 convolution with more than 16 output channels
# several times slower per flop than one with 16 (P-Net's 16→32 conv3 on a 640×480 photo's
# pyramid: 75 ms, against 12 ms as two 16-channel halves; P-Net 113 → 59 ms, measured
# 2026-12-01, docs/benchmarks.md). P-Net therefore computes its output channels in groups of 16
# and concatenates them: the same sums and parameters. R-Net and O-Net, on batches of small
# crops, are faster without (O-Net, batch 64: 83 ms plain, 138 ms grouped).
PNET_OUTPUT_GROUP = 16


class _GroupedConv(nn.Module):
  """A VALID convolution with nn.Conv's parameters (`kernel` (k, k, in, out), `bias` (out,)),
  computed `output_group` output channels at a time."""

  features: int
  kernel: int
  output_group: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (self.kernel, self.kernel, x.shape[-1], self.features)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), shape)
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    groups = [
      jax.lax.conv_general_dilated(
        x,
        kernel[..., start : start + self.output_group],
        (1, 1),
        'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
      for start in range(0, self.features, self.output_group)
    ]
    return jnp.concatenate(groups, axis=-1) + bias


def _conv(features: int, kernel: int, name: str, output_group: int | None = None) -> nn.Module:
  if output_group is not None and features > output_group:
    return _GroupedConv(features, kernel, output_group, name=name)
  return nn.Conv(features, (kernel, kernel), padding='VALID', name=name)


def _flatten_transposed(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, W*H*C) in (W, H, C) order, the order the dense weights expect."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """Proposal network: fully convolutional, one 12×12 window per output cell (stride 2).

  `valid` (N, H - 2, W - 2) bool marks the first-layer outputs whose 3×3 window lies inside one
  image: the input may hold several images side by side (the pyramid levels of a photo, each at
  even coordinates) and padding. The others are set to -inf before the pool, so each output cell
  of an image equals that image's own unpadded run (a pool window hanging over an image's edge
  takes the pixels it covers, as in ceil mode). Returns (box regression (N, h, w, 4), face
  probability (N, h, w)); cells outside an image hold meaningless values.
  """

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None):
    x = PReLU(name='prelu1')(_conv(10, 3, 'conv1')(x))
    if valid is not None:
      x = jnp.where(valid[..., None], x, -jnp.inf)
    x = max_pool_ceil(x, 2, 2)
    if valid is not None:  # cells made only of -inf lie between images; keep them finite
      x = jnp.where(jnp.isneginf(x), 0.0, x)
    x = PReLU(name='prelu2')(_conv(16, 3, 'conv2')(x))
    x = PReLU(name='prelu3')(_conv(32, 3, 'conv3', PNET_OUTPUT_GROUP)(x))
    box = _conv(4, 1, 'box')(x)
    prob = jax.nn.softmax(_conv(2, 1, 'face')(x), axis=-1)[..., 1]
    return box, prob


class RNet(nn.Module):
  """Refinement network on 24×24 crops: (box regression (N, 4), face probability (N,))."""

  @nn.compact
  def __call__(self, x: jax.Array):
    x = max_pool_ceil(PReLU(name='prelu1')(_conv(28, 3, 'conv1')(x)), 3, 2)
    x = max_pool_ceil(PReLU(name='prelu2')(_conv(48, 3, 'conv2')(x)), 3, 2)
    x = PReLU(name='prelu3')(_conv(64, 2, 'conv3')(x))
    x = PReLU(name='prelu4')(nn.Dense(128, name='dense4')(_flatten_transposed(x)))
    box = nn.Dense(4, name='box')(x)
    prob = jax.nn.softmax(nn.Dense(2, name='face')(x), axis=-1)[:, 1]
    return box, prob


class ONet(nn.Module):
  """Output network on 48×48 crops: (box regression (N, 4), landmarks (N, 10), probability (N,)).

  Landmarks are fractions of the crop: the five x then the five y.
  """

  @nn.compact
  def __call__(self, x: jax.Array):
    x = max_pool_ceil(PReLU(name='prelu1')(_conv(32, 3, 'conv1')(x)), 3, 2)
    x = max_pool_ceil(PReLU(name='prelu2')(_conv(64, 3, 'conv2')(x)), 3, 2)
    x = max_pool_ceil(PReLU(name='prelu3')(_conv(64, 3, 'conv3')(x)), 2, 2)
    x = PReLU(name='prelu4')(_conv(128, 2, 'conv4')(x))
    x = PReLU(name='prelu5')(nn.Dense(256, name='dense5')(_flatten_transposed(x)))
    box = nn.Dense(4, name='box')(x)
    landmarks = nn.Dense(10, name='landmarks')(x)
    prob = jax.nn.softmax(nn.Dense(2, name='face')(x), axis=-1)[:, 1]
    return box, landmarks, prob


def normalise(pixels: jax.Array) -> jax.Array:
  """Pixel values 0..255 -> the nets' input scale, (x - 127.5) / 128."""
  return (pixels.astype(jnp.float32) - 127.5) * 0.0078125


def _with_compiler_options(forward: Callable[..., Any]) -> Callable[..., Any]:
  """`forward` jitted on first call with `compiler_options.for_devices()`: on CPU the nets'
  convolutions run in XLA's own runtime, not YNNPACK's (27% more photos/s through the detector on
  an Intel Xeon; benchmarks/faces.py). Jitting on first call keeps the import free of a compile;
  `.jitted()` is the jitted function itself (to lower or inspect)."""

  @functools.cache
  def jitted() -> Callable[..., Any]:
    return jax.jit(forward, compiler_options=compiler_options.for_devices())

  @functools.wraps(forward)
  def call(*args):
    return jitted()(*args)

  call.jitted = jitted  # type: ignore[attr-defined]
  return call


@_with_compiler_options
def pnet_forward(variables: dict, pixels: jax.Array, valid: jax.Array):
  """P-Net on (N, H, W, 3) float images of 0..255 values; `valid` as in PNet."""
  return PNet().apply(variables, normalise(pixels), valid)


@_with_compiler_options
def rnet_forward(variables: dict, pixels: jax.Array):
  """R-Net on a (N, 24, 24, 3) batch of 0..255 crops."""
  return RNet().apply(variables, normalise(pixels))


@_with_compiler_options
def onet_forward(variables: dict, pixels: jax.Array):
  """O-Net on a (N, 48, 48, 3) batch of 0..255 crops."""
  return ONet().apply(variables, normalise(pixels))
