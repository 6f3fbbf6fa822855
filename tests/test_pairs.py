"""Verification pairs from held-out splits: balanced folds, right labels, corrupt images dropped."""

import os

import cv2
import numpy as np
import pytest

from arcface_jax.config_files import load_base
from arcface_jax.data import pairs, sources
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.folder import FolderDataset

BASE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'base.py'
)


@pytest.mark.parametrize('num_pairs', [10, 55, 1000, 1001])
def test_balanced_fold_labels(num_pairs):
  issame = pairs.balanced_fold_labels(num_pairs)
  assert abs(2 * int(issame.sum()) - num_pairs) <= 1
  for fold in np.array_split(issame, 10):
    assert abs(2 * int(fold.sum()) - len(fold)) <= 1


def test_pair_indices_match_their_labels_and_are_deterministic():
  labels = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])  # identities 1 and 3 have one image each
  index, issame = pairs.sample_pair_indices(labels, 200, seed=5)
  assert index.shape == (200, 2) and issame.sum() == 100
  np.testing.assert_array_equal(labels[index[:, 0]] == labels[index[:, 1]], issame)
  assert (index[:, 0] != index[:, 1]).all()  # a positive pair is two different images
  assert set(labels[index[~issame]].ravel()) == {0, 1, 2, 3, 4}  # singletons still negatives
  again, _ = pairs.sample_pair_indices(labels, 200, seed=5)
  np.testing.assert_array_equal(index, again)
  assert not np.array_equal(index, pairs.sample_pair_indices(labels, 200, seed=6)[0])


@pytest.mark.parametrize('labels', [[0, 0, 0], [0, 1, 2]])
def test_too_little_data_for_pairs_is_a_clear_error(labels):
  with pytest.raises(DatasetError, match='cannot make verification pairs'):
    pairs.sample_pair_indices(np.array(labels), 10)
  with pytest.raises(ValueError, match='num_pairs=0'):
    pairs.sample_pair_indices(np.array([0, 0, 1]), 0)


class _Source:
  """Images whose pixels encode their index; the indices in `bad` fail to decode."""

  def __init__(self, labels, bad=(), size=8):
    self.labels, self.bad, self.size = np.asarray(labels), set(bad), size

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    if i in self.bad:
      raise CorruptSampleError(f'img{i}', 'do not decode')
    return np.full((self.size, self.size, 3), i, np.uint8), int(self.labels[i])


def test_images_follow_the_pairs_and_are_resized():
  labels = np.repeat(np.arange(6), 3)
  images, issame = pairs.verification_pairs(_Source(labels, size=12), labels, 40, image_size=4)
  assert images.shape == (80, 4, 4, 3) and images.dtype == np.uint8
  drawn = images[:, 0, 0, 0].reshape(-1, 2)
  np.testing.assert_array_equal(labels[drawn[:, 0]] == labels[drawn[:, 1]], issame)


def test_corrupt_images_are_left_out_not_fatal(caplog):
  labels = np.repeat(np.arange(6), 3)
  bad = {0, 4, 9}
  images, issame = pairs.verification_pairs(_Source(labels, bad), labels, 60, seed=1)
  drawn = set(images[:, 0, 0, 0].tolist())
  assert not drawn & bad and len(issame) == 60
  assert 'left out' in caplog.text and 'img' in caplog.text
  again, _ = pairs.verification_pairs(_Source(labels, bad), labels, 60, seed=1)
  np.testing.assert_array_equal(images, again)


def _tree(root, identities=10, per_identity=3):
  rng = np.random.default_rng(0)
  for identity in range(identities):
    (root / f'p{identity}').mkdir(parents=True)
    for k in range(per_identity):
      cv2.imwrite(
        str(root / f'p{identity}' / f'{k}.png'), rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
      )


def test_folder_val_split_as_a_source_and_as_pairs(tmp_path):
  _tree(tmp_path / 'faces')
  config = load_base(BASE)
  config.data.source = 'folder'
  config.data.path = str(tmp_path / 'faces')
  config.data.val_fraction = 0.3
  config.data.split_seed = 7
  train, val = sources.get_source(config.data, 'train'), sources.get_source(config.data, 'val')
  assert len(train) == 21 and len(val) == 9 and val.num_classes == 3
  assert not set(train.identities) & set(val.identities)
  expected = FolderDataset(config.data.path, 'val', val_fraction=0.3, seed=7)
  assert val.identities == expected.identities
  np.testing.assert_array_equal(sources.source_labels(val), expected.labels)
  images, issame = pairs.verification_pairs(val, sources.source_labels(val), 20, image_size=6)
  assert images.shape == (40, 6, 6, 3) and issame.sum() == 10


def test_sources_without_a_val_split_say_so(tmp_path):
  config = load_base(BASE)
  config.data.source = 'synthetic'
  with pytest.raises(DatasetError, match="source='synthetic' has no 'val' split"):
    sources.get_source(config.data, 'val')
  config.data.source = 'folders'
  with pytest.raises(DatasetError, match="'folders' is not a known source"):
    sources.get_source(config.data, 'train')
