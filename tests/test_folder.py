"""Folder-per-identity source: reading, skipped entries, deterministic disjoint splits."""

import os

import cv2
import numpy as np
import pytest

from arcface_jax.data import folder
from arcface_jax.data.errors import CorruptSampleError, DatasetError


def _tree(root, sizes, seed=0):
  """root/idNN/kk.png for identity NN with sizes[NN] images; returns {path: RGB image}."""
  rng = np.random.default_rng(seed)
  images = {}
  for identity, count in enumerate(sizes):
    (root / f'id{identity:02d}').mkdir(parents=True)
    for k in range(count):
      image = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
      path = root / f'id{identity:02d}' / f'{k:02d}.png'
      cv2.imwrite(str(path), image[..., ::-1])
      images[str(path)] = image
  return images


def test_reads_rgb_with_labels_and_skips_what_is_not_an_image(tmp_path, caplog):
  images = _tree(tmp_path, [2, 3])
  os.rename(tmp_path / 'id01' / '00.png', tmp_path / 'id01' / 'UPPER.PNG')  # case-insensitive
  images[str(tmp_path / 'id01' / 'UPPER.PNG')] = images.pop(str(tmp_path / 'id01' / '00.png'))
  (tmp_path / 'id00' / 'readme.txt').write_text('x')
  (tmp_path / 'id00' / 'nested').mkdir()
  (tmp_path / 'zz_empty').mkdir()
  (tmp_path / 'zz_only_text').mkdir()
  (tmp_path / 'zz_only_text' / 'a.csv').write_text('x')
  (tmp_path / 'stray.jpg').write_bytes(b'')  # a file at the top level is not an identity
  ds = folder.FolderDataset(str(tmp_path), split='all')
  assert len(ds) == 5 and ds.num_classes == 2 and ds.identities == ['id00', 'id01']
  assert ds.num_skipped_files == 3 and ds.num_empty_identities == 2
  assert sorted(os.path.basename(p) for p in ds.skipped_files) == ['a.csv', 'nested', 'readme.txt']
  assert 'skipped 3 non-image entries' in caplog.text
  for i, path in enumerate(ds.paths):
    image, label = ds[i]
    np.testing.assert_array_equal(image, images[path])
    assert label == (0 if '/id00/' in path else 1)


def test_bad_files_and_bad_roots(tmp_path):
  _tree(tmp_path / 'ok', [2])
  (tmp_path / 'ok' / 'id00' / 'zz.jpg').write_bytes(b'not really a jpeg')
  ds = folder.FolderDataset(str(tmp_path / 'ok'), split='all')
  with pytest.raises(CorruptSampleError, match='do not decode') as error:
    ds[2]
  assert error.value.key.endswith('zz.jpg')
  os.remove(tmp_path / 'ok' / 'id00' / '00.png')
  with pytest.raises(CorruptSampleError, match='cannot be read'):
    ds[0]
  with pytest.raises(DatasetError, match='not a directory'):
    folder.FolderDataset(str(tmp_path / 'missing'))
  (tmp_path / 'flat').mkdir()
  (tmp_path / 'flat' / 'a.jpg').write_bytes(b'')
  (tmp_path / 'flat' / 'empty').mkdir()
  with pytest.raises(DatasetError, match='flat has no identity sub-folders'):
    folder.FolderDataset(str(tmp_path / 'flat'))
  with pytest.raises(DatasetError, match="split 'val'.*holds no images"):
    folder.FolderDataset(str(tmp_path / 'ok'), split='val')
  with pytest.raises(ValueError, match='split_by'):
    folder.FolderDataset(str(tmp_path / 'ok'), split_by='person')


def test_identity_split_is_deterministic_disjoint_and_dense(tmp_path):
  _tree(tmp_path, [2] * 20)
  kwargs = dict(split_by='identity', val_fraction=0.2, test_fraction=0.1, seed=3)
  splits = {
    s: folder.FolderDataset(str(tmp_path), split=s, **kwargs) for s in ('train', 'val', 'test')
  }
  names = {s: set(ds.identities) for s, ds in splits.items()}
  assert [len(names[s]) for s in ('train', 'val', 'test')] == [14, 4, 2]
  assert not (
    names['train'] & names['val'] or names['train'] & names['test'] or names['val'] & names['test']
  )
  assert set.union(*names.values()) == {f'id{i:02d}' for i in range(20)}
  for ds in splits.values():  # labels 0..K−1 within each split, in name order
    assert ds.identities == sorted(ds.identities)
    assert sorted(set(ds.labels.tolist())) == list(range(ds.num_classes))
    for path, label in zip(ds.paths, ds.labels):
      assert os.path.basename(os.path.dirname(path)) == ds.identities[label]
  again = folder.FolderDataset(str(tmp_path), split='val', **kwargs)
  assert again.paths == splits['val'].paths
  other_seed = folder.FolderDataset(str(tmp_path), split='val', **{**kwargs, 'seed': 4})
  assert other_seed.identities != splits['val'].identities


def test_image_split_is_disjoint_and_keeps_every_identity_in_train(tmp_path):
  sizes = [1, 2, 3, 5, 8, 13, 10, 10, 10, 10]
  _tree(tmp_path, sizes)
  kwargs = dict(split_by='image', val_fraction=0.2, test_fraction=0.2, seed=0)
  splits = {
    s: folder.FolderDataset(str(tmp_path), split=s, **kwargs) for s in ('train', 'val', 'test')
  }
  paths = {s: set(ds.paths) for s, ds in splits.items()}
  assert not (
    paths['train'] & paths['val'] or paths['train'] & paths['test'] or paths['val'] & paths['test']
  )
  assert sum(len(p) for p in paths.values()) == sum(sizes)
  assert set(splits['train'].labels.tolist()) == set(range(10))  # closed set: all in train
  assert all(ds.num_classes == 10 for ds in splits.values())
  held_out = len(paths['val']) + len(paths['test'])
  assert 0.25 * sum(sizes) < held_out < 0.55 * sum(sizes)
  for ds in splits.values():  # one label space: label ↔ folder is the same in every split
    for path, label in zip(ds.paths, ds.labels):
      assert os.path.basename(os.path.dirname(path)) == f'id{label:02d}'
  assert folder.FolderDataset(str(tmp_path), split='test', **kwargs).paths == splits['test'].paths


def test_splits_are_stable_when_an_identity_is_added(tmp_path):
  _tree(tmp_path, [2] * 30)
  before = folder.FolderDataset(str(tmp_path), split='test', test_fraction=0.2).identities
  (tmp_path / 'id99').mkdir()
  cv2.imwrite(str(tmp_path / 'id99' / 'a.png'), np.zeros((6, 6, 3), np.uint8))
  after = folder.FolderDataset(str(tmp_path), split='test', test_fraction=0.2).identities
  assert len(set(before) ^ set(after)) <= 2  # at most one identity moved across the boundary


def test_too_few_identities_for_the_fractions(tmp_path):
  _tree(tmp_path, [2, 2])
  with pytest.raises(DatasetError, match='2 identities cannot be split'):
    folder.FolderDataset(str(tmp_path), val_fraction=0.3, test_fraction=0.3)


def test_non_square_photos_are_centre_cropped_not_stretched(tmp_path, caplog):
  # A wide and a tall photo whose centred square holds a known pattern and whose borders are red.
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  rng = np.random.default_rng(0)
  centre = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
  wide = np.zeros((6, 11, 3), np.uint8)
  wide[..., 0] = 255
  wide[:, 2:8] = centre  # 5 extra columns: 2 cut on the left, 3 on the right
  tall = np.zeros((9, 6, 3), np.uint8)
  tall[..., 0] = 255
  tall[1:7] = centre  # 3 extra rows: 1 cut at the top, 2 at the bottom
  cv2.imwrite(str(tmp_path / 'a' / 'wide.png'), wide[..., ::-1])
  cv2.imwrite(str(tmp_path / 'b' / 'tall.png'), tall[..., ::-1])
  ds = folder.FolderDataset(str(tmp_path), split='all')
  with caplog.at_level('WARNING'):
    for i in range(len(ds)):
      image, _ = ds[i]
      np.testing.assert_array_equal(image, centre)
  assert caplog.text.count('centre-cropped to a square') == 1  # logged once per tree
  assert 'not stretched' in caplog.text


def test_center_crop_square_keeps_squares_and_the_centre():
  from arcface_jax.data.decode import center_crop_square

  square = np.arange(16).reshape(4, 4)
  assert center_crop_square(square) is square
  np.testing.assert_array_equal(center_crop_square(np.arange(12).reshape(2, 6)), [[2, 3], [8, 9]])
  np.testing.assert_array_equal(center_crop_square(np.arange(12).reshape(6, 2)), [[4, 5], [6, 7]])
