"""config.data.exclude: listed training images never reach a batch; clear errors on a bad list."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from arcface_jax.data import sources
from arcface_jax.data.errors import DatasetError
from arcface_jax.data.pipeline import TrainLoader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, identities=3, per_identity=4):
  """Image k of the tree (in path order) is a constant 8×8 PNG of value 10 + 13·k."""
  for identity in range(identities):
    (root / f'id{identity}').mkdir(parents=True)
    for j in range(per_identity):
      value = 10 + 13 * (identity * per_identity + j)
      cv2.imwrite(str(root / f'id{identity}' / f'{j:02d}.png'), np.full((8, 8, 3), value, np.uint8))


def _data_config(**values):
  from arcface_jax.config_files import load_base

  data = load_base(os.path.join(REPO, 'configs', 'base.py')).data
  data.update(values)
  return data


def test_excluded_folder_images_never_appear_in_batches(tmp_path, caplog):
  _folder(tmp_path / 'faces')
  listed = tmp_path / 'exclude.txt'
  listed.write_text(
    '# set aside for review\n1\n\nid2/03.png  # a path, relative to data.path\n'
    f'{tmp_path / "faces" / "id1" / "00.png"}\n1\n'
  )
  data = _data_config(source='folder', path=str(tmp_path / 'faces'), exclude=str(listed))
  with caplog.at_level('INFO'):
    source = sources.get_train_source(data)
  assert 'excluding 3 of 12 images listed in' in caplog.text and str(listed) in caplog.text
  assert len(source) == 9 and source.num_classes == 3
  np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  excluded_values = {10 + 13 * k for k in (1, 4, 11)}
  loader = TrainLoader(source, global_batch_size=3, seed=0, image_size=8, flip=False)
  seen = []
  for step in range(6):  # two epochs
    batch = loader.batch(step)
    values = np.rint(batch['image'][:, 0, 0, 0]).astype(int)
    seen += values.tolist()
    np.testing.assert_array_equal(batch['label'], (values - 10) // 13 // 4)
  assert set(seen) == {10 + 13 * k for k in range(12)} - excluded_values
  assert len(seen) == 18


def test_a_flagged_tsv_on_another_source_and_bad_lists(tmp_path):
  full = sources.get_train_source(_data_config(source='digits', image_size=8))
  flagged = tmp_path / 'flagged.tsv'
  flagged.write_text('index\tlabel\tangle_deg\tnearest_subcentre\n7\t7\t80.1\t2\n0\t0\t76.0\t1\n')
  source = sources.get_train_source(
    _data_config(source='digits', image_size=8, exclude=str(flagged))
  )
  assert len(source) == len(full) - 2
  np.testing.assert_array_equal(source.kept[:7], [1, 2, 3, 4, 5, 6, 8])
  np.testing.assert_array_equal(source[6][0], full[8][0])
  np.testing.assert_array_equal(source.labels, sources.source_labels(full)[source.kept])

  def error(text=None, name='list.txt'):
    path = tmp_path / name
    if text is not None:
      path.write_text(text)
    with pytest.raises(DatasetError) as info:
      sources.get_train_source(_data_config(source='digits', image_size=8, exclude=str(path)))
    assert str(path) in str(info.value)
    return str(info.value)

  assert 'no such file' in error(name='missing.txt')
  message = error(f'3\n{len(full)}\n-1\n')
  assert 'names 2 images not in the training set' in message and f'index {len(full)}' in message
  assert 'only folder datasets take file paths' in error('id0/00.png\n')
  assert 'lists all' in error('\n'.join(str(i) for i in range(len(full))))
