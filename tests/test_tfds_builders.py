"""TFDS builders: folder and RecordIO → array_record → tfds.data_source, bytes unchanged."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface_jax.data import folder, pack, recordio, tfds_builders
from arcface_jax.data.errors import DatasetError

tfds = pytest.importorskip('tensorflow_datasets')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tree(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'faces'
  for identity in range(6):
    (root / f'id{identity}').mkdir(parents=True)
    for k in range(3):
      # Square: the folder source centre-crops non-square photos, the builder keeps the bytes.
      image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
      cv2.imwrite(str(root / f'id{identity}' / f'{k}.png'), image[..., ::-1])
  (root / 'id0' / 'fake.jpg').write_bytes(b'plain text, not a JPEG')
  return root


def _contents(samples):
  return sorted((int(label), image.tobytes()) for image, label in samples)


def test_folder_round_trip_with_splits(tree, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  name = tfds_builders.build_folder(str(tree), data_dir, name='mini', test_fraction=0.34)
  assert name == 'face_folder/mini'
  source = tfds.data_source(name, data_dir=data_dir)
  assert sorted(source) == ['test', 'train']
  for split in ('train', 'test'):
    expected = folder.FolderDataset(str(tree), split=split, test_fraction=0.34)
    good = [i for i, p in enumerate(expected.paths) if not p.endswith('fake.jpg')]
    records = [source[split][i] for i in range(len(source[split]))]
    assert len(records) == len(good)  # the fake JPEG was skipped
    assert _contents((r['image'], r['label']) for r in records) == _contents(
      expected[i] for i in good
    )  # RGB, exact (PNG bytes passed through)
    for r in records:
      assert r['identity'].decode() == expected.identities[r['label']]
  builder = tfds.builder(name, data_dir=data_dir)  # read back without this module's classes
  assert builder.info.features['label'].num_classes == 4  # train's 4 identities (2 in test)


def test_recordio_round_trip(tree, tmp_path):
  os.remove(tree / 'id0' / 'fake.jpg')
  pack.pack_folder(str(tree), str(tmp_path / 'rec'))
  ds = recordio.RecordDataset(str(tmp_path / 'rec'))
  data_dir = str(tmp_path / 'tfds')
  name = tfds_builders.build_recordio(str(tmp_path / 'rec'), data_dir, name='mini')
  source = tfds.data_source(name, data_dir=data_dir, split='train')
  assert len(source) == len(ds) == 18
  assert _contents(
    (source[i]['image'], source[i]['label']) for i in range(len(source))
  ) == _contents(ds[i] for i in range(len(ds)))
  assert tfds.builder(name, data_dir=data_dir).info.features['label'].num_classes == 6


def test_command_and_bad_input(tree, tmp_path):
  with pytest.raises(DatasetError, match='not a directory'):
    tfds_builders.build_folder(str(tmp_path / 'missing'), str(tmp_path / 'tfds'))
  with pytest.raises(DatasetError, match='train.rec not found'):
    tfds_builders.build_recordio(str(tmp_path), str(tmp_path / 'tfds'))
  data_dir = str(tmp_path / 'cmd')
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'arcface_jax.data.tfds_builders',
      'folder',
      str(tree),
      '--data_dir',
      data_dir,
      '--name',
      'cli',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert 'built face_folder/cli' in result.stdout
  assert len(tfds.data_source('face_folder/cli', data_dir=data_dir, split='train')) == 18


def test_built_val_split_reads_back_as_a_training_source(tree, tmp_path):
  from arcface_jax.config_files import load_base
  from arcface_jax.data import pairs, sources

  data_dir = str(tmp_path / 'tfds')
  name = tfds_builders.build_folder(str(tree), data_dir, name='held', val_fraction=0.34, seed=2)
  config = load_base(os.path.join(REPO, 'configs', 'base.py'))
  config.data.source, config.data.path, config.data.data_dir = 'tfds', name, data_dir
  train, val = sources.get_source(config.data, 'train'), sources.get_source(config.data, 'val')
  expected = folder.FolderDataset(str(tree), 'val', val_fraction=0.34, seed=2)
  good = [i for i, p in enumerate(expected.paths) if not p.endswith('fake.jpg')]
  assert len(val) == len(good) and len(train) + len(val) == 18  # fake.jpg skipped
  assert _contents(val[i] for i in range(len(val))) == _contents(expected[i] for i in good)
  images, issame = pairs.verification_pairs(val, sources.source_labels(val), 10)
  assert images.shape == (20, 8, 8, 3) and issame.sum() == 5
