"""The input pipeline: exact resume position, per-epoch shuffles, process slices, bad samples."""
import numpy as np
import pytest

from arcface_jax.data import sources
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.pipeline import TrainLoader


class CountingSource:
  """Sample i is a constant image of value i % 251 with label i; some indices are corrupt."""

  def __init__(self, n=40, size=8, corrupt=()):
    self.n, self.size, self.corrupt = n, size, set(corrupt)
    self.num_classes = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i in self.corrupt:
      raise CorruptSampleError(f'sample-{i}', 'bad JPEG')
    return np.full((self.size, self.size, 3), i % 251, np.uint8), i


def _loader(source, **kw):
  args = dict(global_batch_size=8, seed=3, image_size=8, flip=False)
  args.update(kw)
  return TrainLoader(source, **args)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_resume_yields_exactly_the_tail_of_an_uninterrupted_run():
  loader = _loader(CountingSource(), flip=True, rotation_degrees=10, color_jitter=0.2)
  full = _take(loader.iterate(0), 12)  # 2.4 epochs of 5 steps
  resumed = _take(_loader(CountingSource(), flip=True, rotation_degrees=10,
                          color_jitter=0.2).iterate(7), 5)
  for a, b in zip(full[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_every_sample_once_per_epoch_and_epochs_reshuffled():
  loader = _loader(CountingSource(n=43))  # 5 steps per epoch, 3 samples dropped per epoch
  batches = _take(loader.iterate(0), 10)
  epoch0 = np.concatenate([b['label'] for b in batches[:5]])
  epoch1 = np.concatenate([b['label'] for b in batches[5:]])
  assert len(set(epoch0)) == 40 and len(set(epoch1)) == 40
  assert not np.array_equal(epoch0, epoch1)


def test_normalisation_and_flip():
  source = CountingSource()
  batch = next(_loader(source, mean=127.5, std=127.5).iterate(0))
  labels = batch['label']
  np.testing.assert_allclose(batch['image'][:, 0, 0, 0], (labels % 251 - 127.5) / 127.5,
                             rtol=1e-6)
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32


def test_flip_mirrors_the_image():
  class Gradient(CountingSource):
    def __getitem__(self, i):
      return np.tile(np.arange(8, dtype=np.uint8)[None, :, None], (8, 1, 3)), i
  flipped = next(_loader(Gradient(), flip=True, std=1.0, mean=0.0).iterate(0))['image']
  rows = flipped[:, 0, :, 0]
  assert any(np.array_equal(r, np.arange(8)) for r in rows)
  assert any(np.array_equal(r, np.arange(8)[::-1]) for r in rows)


def test_process_slices_partition_the_global_batch():
  whole = next(_loader(CountingSource()).iterate(2))['label']
  parts = [next(_loader(CountingSource(), process_index=p, process_count=2).iterate(2))['label']
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_corrupt_samples_are_substituted_and_counted():
  loader = _loader(CountingSource(corrupt={3, 4, 17}))
  labels = np.concatenate([b['label'] for b in _take(loader.iterate(0), 5)])
  assert not {3, 4, 17} & set(labels.tolist())
  assert loader.bad_samples >= 3  # 4 may be hit twice: as itself and as 3's substitute
  assert set(loader.bad_keys) == {'sample-3', 'sample-4', 'sample-17'}


def test_a_dataset_smaller_than_a_batch_is_refused():
  with pytest.raises(DatasetError, match='fewer than one global batch'):
    _loader(CountingSource(n=4))


def test_unknown_source_and_missing_path_name_the_problem(tmp_path):
  import ml_collections
  config = ml_collections.ConfigDict(dict(source='parquet', path='', data_dir=str(tmp_path)))
  with pytest.raises(DatasetError, match="'parquet'"):
    sources.get_train_source(config)
  config.source, config.path = 'folder', str(tmp_path / 'missing')
  with pytest.raises(DatasetError, match='missing'):
    sources.get_train_source(config)
