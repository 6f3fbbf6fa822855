"""Flip-sum extraction against NumPy: ragged batches, the 8-device mesh, XNorm over real rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from arcface_jax.evaluation.extract import extract_embeddings

SIZE, DIM = 6, 5


def _weights():
  return np.random.default_rng(1).normal(size=(SIZE * SIZE * 3, DIM)).astype(np.float32)


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)


def _reference(images, mean, std, flip):
  """The same computation in float64 NumPy: a fixed linear map of the flattened image."""
  w = _weights().astype(np.float64)
  x = (images.astype(np.float64) - mean) / std
  views = [x, x[:, :, ::-1]] if flip else [x]
  raw = [v.reshape(len(v), -1) @ w for v in views]
  norms = np.concatenate([np.linalg.norm(r, axis=1) for r in raw])
  return sum(raw), norms.mean()


class _LinearModel:
  """A jitted linear embedder that records what it was called with."""

  def __init__(self):
    w = jnp.asarray(_weights())
    self._fn = jax.jit(lambda x: x.reshape(x.shape[0], -1) @ w)
    self.calls = []

  def __call__(self, x):
    self.calls.append((x.shape, x.dtype, getattr(x, 'sharding', None)))
    return self._fn(x)


@pytest.mark.parametrize('n,batch_size', [(21, 8), (3, 4), (8, 8)])
def test_matches_numpy_without_a_mesh(n, batch_size):
  images = _images(n)
  model = _LinearModel()
  emb, xnorm = extract_embeddings(model, images, batch_size=batch_size)
  expected, expected_xnorm = _reference(images, 127.5, 127.5, flip=True)
  assert emb.dtype == np.float32 and emb.shape == (n, DIM)
  np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-4)
  # Padding rows (all zeros, so x = -1, a large embedding) would shift XNorm if counted.
  assert xnorm == pytest.approx(expected_xnorm, rel=1e-5)
  assert {shape[0] for shape, _, _ in model.calls} == {min(batch_size, n)}
  assert all(dtype == jnp.float32 for _, dtype, _ in model.calls)


def test_eight_device_mesh_shards_every_batch_and_keeps_the_ragged_tail():
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  images = _images(37, seed=3)
  model = _LinearModel()
  # batch_size 12 rounds up to 16: batches of 16, 16 and a tail of 5 padded to 16.
  emb, xnorm = extract_embeddings(model, images, batch_size=12, mesh=mesh, mean=127.5, std=128.0)
  expected, expected_xnorm = _reference(images, 127.5, 128.0, flip=True)
  np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-4)
  assert xnorm == pytest.approx(expected_xnorm, rel=1e-5)
  assert len(model.calls) == 6  # 3 batches x (image, flip)
  for shape, _, sharding in model.calls:
    assert shape[0] == 16
    assert isinstance(sharding, NamedSharding) and sharding.spec == P('data')
    assert sharding.mesh.shape['data'] == 8


def test_without_flip_each_image_is_embedded_once():
  images = _images(10, seed=5)
  model = _LinearModel()
  emb, xnorm = extract_embeddings(
    model, images, batch_size=4, flip=False, mean=(120.0, 127.5, 130.0), std=(60.0, 64.0, 70.0)
  )
  mean, std = np.array([120.0, 127.5, 130.0]), np.array([60.0, 64.0, 70.0])
  expected, expected_xnorm = _reference(images, mean, std, flip=False)
  np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-4)
  assert xnorm == pytest.approx(expected_xnorm, rel=1e-5)
  assert len(model.calls) == 3


def test_bad_inputs_are_refused():
  model = _LinearModel()
  with pytest.raises(ValueError, match='no images'):
    extract_embeddings(model, np.zeros((0, SIZE, SIZE, 3), np.uint8), batch_size=4)
  with pytest.raises(ValueError, match=r'\(N, H, W, 3\)'):
    extract_embeddings(model, np.zeros((2, SIZE, SIZE), np.uint8), batch_size=4)
