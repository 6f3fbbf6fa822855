"""The embedded synthetic identities: deterministic, disjoint splits, identity signal, pairs."""
import numpy as np
import pytest

from arcface_jax.data import synthetic
from arcface_jax.data.errors import DatasetError


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def test_rendering_is_deterministic_and_varies_per_image():
  a = synthetic.render_identity(7, 4, 16, image_seed=0)
  b = synthetic.render_identity(7, 4, 16, image_seed=0)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 16, 16, 3) and a.dtype == np.uint8
  assert not np.array_equal(a[0], a[1])


def test_same_identity_images_are_closer_than_different_identities():
  size = 32
  images = {i: synthetic.render_identity(i, 10, size, 0).astype(np.float32) for i in range(8)}
  # Compare in a blurred, mean-centred space so the random background and noise do not dominate.
  def features(x):
    centre = x[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4]
    return centre.reshape(len(x), -1) - centre.mean()
  same, different = [], []
  for i in range(8):
    fi = features(images[i])
    same.append(np.mean([np.linalg.norm(fi[a] - fi[b]) for a in range(5) for b in range(5, 10)]))
    fj = features(images[(i + 1) % 8])
    different.append(np.mean([np.linalg.norm(fi[a] - fj[b]) for a in range(5) for b in range(5)]))
  assert np.mean(same) < np.mean(different)


def test_builder_generates_train_and_test_splits(data_dir):
  train = synthetic.load_synthetic('tiny', data_dir, 'train')
  test = synthetic.load_synthetic('tiny', data_dir, 'test')
  variant = synthetic.VARIANTS['tiny']
  assert len(train) == variant.train_identities * variant.images_per_identity
  assert len(test) == variant.test_identities * variant.images_per_identity
  image, label = train[0]
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8
  assert sorted({train[i][1] for i in range(len(train))}) == list(range(train.num_classes))
  # Held-out identities are rendered from a disjoint seed range: no test image equals a training
  # image of any identity.
  train_images = {train[i][0].tobytes() for i in range(len(train))}
  assert not any(test[i][0].tobytes() in train_images for i in range(len(test)))


def test_verification_pairs_are_balanced_per_fold(data_dir):
  images, issame = synthetic.synthetic_verification_pairs('tiny', data_dir, 40)
  assert images.shape == (80, 16, 16, 3) and issame.shape == (40,)
  for fold in np.array_split(issame, 10):
    assert fold.sum() == len(fold) // 2
  again, _ = synthetic.synthetic_verification_pairs('tiny', data_dir, 40)
  np.testing.assert_array_equal(images, again)


def test_unknown_variant_is_a_clear_error(data_dir):
  with pytest.raises(DatasetError, match="'huge'"):
    synthetic.load_synthetic('huge', data_dir, 'train')
