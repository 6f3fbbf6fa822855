"""The embedded synthetic-identity dataset: deterministic, open-set, learnable, balanced pairs."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from arcface_jax.data import synthetic
from arcface_jax.data.errors import DatasetError


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('synthetic_data'))


def _all(source) -> tuple[np.ndarray, np.ndarray]:
  records = [source[i] for i in range(len(source))]
  return np.stack([r[0] for r in records]), np.array([r[1] for r in records])


def test_tiny_builds_and_reads_back_through_tfds_data_source(data_dir):
  variant = synthetic.VARIANTS['tiny']
  train = synthetic.load_synthetic('tiny', data_dir, 'train')
  test = synthetic.load_synthetic('tiny', data_dir, 'test')
  assert len(train) == variant.train_identities * variant.images_per_identity
  assert len(test) == variant.test_identities * variant.images_per_identity
  assert (train.num_classes, test.num_classes) == (
    variant.train_identities,
    variant.test_identities,
  )
  # Stored as array_record and readable by plain TFDS, no TensorFlow involved.
  stored = os.listdir(os.path.join(data_dir, 'synthetic_faces', 'tiny', '1.1.0'))
  assert any('.array_record-' in f for f in stored)
  raw = tfds.data_source('synthetic_faces/tiny', data_dir=data_dir, split='train')
  image, label = train[5]
  assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
  np.testing.assert_array_equal(raw[5]['image'], image)
  assert raw[5]['label'] == label
  images, labels = _all(train)
  # Every identity has exactly its images, labels 0..N-1.
  np.testing.assert_array_equal(
    np.bincount(labels), np.full(variant.train_identities, variant.images_per_identity)
  )
  # Stored PNG is lossless: the images are exactly what the renderer draws.
  rendered = synthetic.render_identity(3, variant.images_per_identity, variant.image_size, 0)
  stored = images[labels == 3]
  assert sorted(map(bytes, stored)) == sorted(map(bytes, rendered))


def test_generation_is_deterministic(tmp_path):
  a = synthetic.render_identity(11, 6, 24, image_seed=0)
  b = synthetic.render_identity(11, 6, 24, image_seed=0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, synthetic.render_identity(12, 6, 24, image_seed=0))
  # Two independent builds in different directories store the same records in the same order.
  first = _all(synthetic.load_synthetic('tiny', str(tmp_path / 'one'), 'test'))
  second = _all(synthetic.load_synthetic('tiny', str(tmp_path / 'two'), 'test'))
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[1], second[1])


def test_concurrent_first_use_generates_once(tmp_path):
  errors, sizes = [], []

  def load():
    try:
      sizes.append(len(synthetic.load_synthetic('tiny', str(tmp_path), 'train')))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=load) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and sizes == [128, 128]
  assert not [d for d in os.listdir(tmp_path / 'synthetic_faces' / 'tiny') if 'incomplete' in d]


def test_test_identities_are_disjoint_from_train(data_dir):
  train_images, train_labels = _all(synthetic.load_synthetic('tiny', data_dir, 'train'))
  test_images, test_labels = _all(synthetic.load_synthetic('tiny', data_dir, 'test'))

  # Identity prototypes differ: no test identity's mean image matches a train identity's.
  def means(images, labels):
    return np.stack([images[labels == c].astype(np.float32).mean(0) for c in np.unique(labels)])

  train_means = means(train_images, train_labels).reshape(16, -1)
  test_means = means(test_images, test_labels).reshape(12, -1)
  distances = np.linalg.norm(train_means[:, None] - test_means[None], axis=-1)
  assert distances.min() > 1.0
  # And no image is shared.
  assert not set(map(bytes, train_images)) & set(map(bytes, test_images))
  # The seeds the builder draws them from cannot overlap.
  assert synthetic._TEST_SEED_OFFSET >= max(v.train_identities for v in synthetic.VARIANTS.values())


def test_same_identity_is_closer_but_not_identical():
  size, count = 32, 10
  images = np.stack([synthetic.render_identity(i, count, size, 0) for i in range(24)])
  x = images.reshape(24, count, -1).astype(np.float32)
  x -= x.mean(-1, keepdims=True)
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  sims = np.einsum('aid,bjd->abij', x, x)
  same = np.mean([sims[a, a][~np.eye(count, dtype=bool)].mean() for a in range(24)])
  different = sims[~np.eye(24, dtype=bool)].mean()
  assert same > different + 0.05
  # ... but images of one identity are never copies of each other (nuisance variation exists).
  flat = images.reshape(24 * count, -1)
  assert len({bytes(row) for row in flat}) == len(flat)
  assert same < 0.95


def test_pairs_are_deterministic_and_balanced_per_fold(data_dir):
  images, issame = synthetic.synthetic_verification_pairs('tiny', data_dir, 60, seed=1)
  again, issame_again = synthetic.synthetic_verification_pairs('tiny', data_dir, 60, seed=1)
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(issame, issame_again)
  assert images.shape == (120, 16, 16, 3) and images.dtype == np.uint8
  assert issame.dtype == bool and issame.sum() == 30
  for fold in np.array_split(issame, 10):
    assert fold.sum() * 2 == len(fold)
  # Same pairs come from one test identity, different pairs from two: check via the labels.
  test = synthetic.load_synthetic('tiny', data_dir, 'test')
  by_bytes = {bytes(test[i][0]): test[i][1] for i in range(len(test))}
  labels = np.array([by_bytes[bytes(im)] for im in images]).reshape(-1, 2)
  np.testing.assert_array_equal(labels[:, 0] == labels[:, 1], issame)
  other, _ = synthetic.synthetic_verification_pairs('tiny', data_dir, 60, seed=2)
  assert not np.array_equal(images, other)


def test_unknown_variant_and_split_are_clear_errors(data_dir):
  with pytest.raises(DatasetError, match="'huge'.*demo"):
    synthetic.load_synthetic('huge', data_dir, 'train')
  with pytest.raises(DatasetError, match="'validation'"):
    synthetic.load_synthetic('tiny', data_dir, 'validation')


def test_opencv_decoding_of_stored_pngs_matches_tfds_own(data_dir):
  source = synthetic.load_synthetic('tiny', data_dir, 'test')
  assert source._encoded  # TFDS's decoding is skipped; OpenCV decodes the PNG bytes
  plain = tfds.data_source(
    f'{synthetic.NAME}/tiny', data_dir=os.path.abspath(data_dir), split='test', download=False
  )
  images, labels = _all(source)
  np.testing.assert_array_equal(images, np.stack([plain[i]['image'] for i in range(len(plain))]))
  np.testing.assert_array_equal(labels, [plain[i]['label'] for i in range(len(plain))])
  np.testing.assert_array_equal(source.labels, labels)
