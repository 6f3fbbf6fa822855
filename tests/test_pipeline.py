"""The input pipeline and source selection: exact resume, per-epoch shuffles and augmentation,
process slices, resizing, bad samples, clear errors for unknown sources and missing paths."""

import os
import sys
import threading

import numpy as np
import pytest

from arcface_jax.data import sources, thread_priority
from arcface_jax.data.errors import CorruptSampleError, DatasetError, read_or_error
from arcface_jax.data.pipeline import TrainLoader, prefetch_to_device


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
  resumed = _take(
    _loader(CountingSource(), flip=True, rotation_degrees=10, color_jitter=0.2).iterate(7), 5
  )
  for a, b in zip(full[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


class PrioritySource(CountingSource):
  """Records the scheduling priority (niceness) of each thread that reads a sample."""

  def __init__(self):
    super().__init__()
    self.niceness = {}

  def __getitem__(self, i):
    thread = threading.get_native_id()
    self.niceness[thread] = os.getpriority(os.PRIO_PROCESS, thread)
    return super().__getitem__(i)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='per-thread priority is Linux')
def test_reader_threads_run_nicer_than_the_training_thread():
  source = PrioritySource()
  main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
  _take(_loader(source).iterate(0), 6)
  readers = {t: n for t, n in source.niceness.items() if t != threading.get_native_id()}
  assert readers and all(
    n == min(19, main_before + thread_priority.READER_NICENESS) for n in readers.values()
  )
  # The consumer's own thread, and batches made in it directly, keep their priority.
  _loader(source).batch(0)
  assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


def test_every_sample_once_per_epoch_and_epochs_reshuffled():
  loader = _loader(CountingSource(n=43))  # 5 steps per epoch, 3 samples dropped per epoch
  batches = _take(loader.iterate(0), 10)
  epoch0 = np.concatenate([b['label'] for b in batches[:5]])
  epoch1 = np.concatenate([b['label'] for b in batches[5:]])
  assert len(set(epoch0)) == 40 and len(set(epoch1)) == 40
  assert not np.array_equal(epoch0, epoch1)


def test_batches_are_uint8_pixels_as_read():
  batch = next(_loader(CountingSource()).iterate(0))
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'] % 251)


def test_device_normalisation_matches_float64():
  import jax

  from arcface_jax.data.normalise import normalise_images

  images = np.random.default_rng(0).integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
  mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
  got = np.asarray(jax.jit(lambda x: normalise_images(x, mean, std))(images))
  want = (images.astype(np.float64) - np.array(mean)) / np.array(std)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(normalise_images(images, 127.5, 127.5)),
    (images.astype(np.float64) - 127.5) / 127.5,
    rtol=1e-6,
    atol=1e-6,
  )
  already = want.astype(np.float32)  # floating images are taken as normalised
  np.testing.assert_array_equal(np.asarray(normalise_images(already, mean, std)), already)
  with pytest.raises(ValueError, match='one per RGB channel'):
    normalise_images(images, (1.0, 2.0), 1.0)


def test_prefetch_to_device_keeps_order_places_ahead_and_closes():
  placed, closed = [], []

  def batches():
    try:
      for i in range(5):
        yield {'image': np.full((2, 1, 1, 3), i, np.uint8)}
    finally:
      closed.append(True)

  def place(batch):
    placed.append(int(batch['image'][0, 0, 0, 0]))
    return placed[-1]

  prefetched = prefetch_to_device(batches(), place, depth=2)
  assert next(prefetched) == 0 and placed == [0, 1]  # the next one is on its way already
  assert next(prefetched) == 1 and placed == [0, 1, 2]
  assert list(prefetched) == [2, 3, 4]
  assert closed == [True]
  early = prefetch_to_device(batches(), place, depth=3)
  next(early)
  early.close()  # the trainer stopping early closes the host pipeline too
  assert closed == [True, True]


def test_flip_mirrors_the_image():
  class Gradient(CountingSource):
    def __getitem__(self, i):
      return np.tile(np.arange(8, dtype=np.uint8)[None, :, None], (8, 1, 3)), i

  flipped = next(_loader(Gradient(), flip=True).iterate(0))['image']
  rows = flipped[:, 0, :, 0]
  assert any(np.array_equal(r, np.arange(8)) for r in rows)
  assert any(np.array_equal(r, np.arange(8)[::-1]) for r in rows)


def test_process_slices_partition_the_global_batch():
  whole = next(_loader(CountingSource()).iterate(2))['label']
  parts = [
    next(_loader(CountingSource(), process_index=p, process_count=2).iterate(2))['label']
    for p in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_corrupt_samples_are_substituted_and_counted():
  loader = _loader(CountingSource(corrupt={3, 4, 17}))
  labels = np.concatenate([b['label'] for b in _take(loader.iterate(0), 5)])
  assert not {3, 4, 17} & set(labels.tolist())
  assert loader.bad_samples >= 3  # 4 may be hit twice: as itself and as 3's substitute
  assert set(loader.bad_keys) == {'sample-3', 'sample-4', 'sample-17'}


class BatchReadingSource(CountingSource):
  """CountingSource with `read_many` (as TfdsSource): the first try of every row in one call."""

  def __init__(self, **kw):
    super().__init__(**kw)
    self.batch_calls = 0

  def read_many(self, indices):
    self.batch_calls += 1
    return [read_or_error(self, i) for i in indices]


def test_batch_reads_give_the_same_batches_substitutions_and_counts():
  single, batched = CountingSource(corrupt={3, 4, 17}), BatchReadingSource(corrupt={3, 4, 17})
  loaders = _loader(single), _loader(batched)
  for a, b in zip(*(_take(loader.iterate(0), 10) for loader in loaders)):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  assert batched.batch_calls >= 10
  assert loaders[0].bad_samples == loaders[1].bad_samples >= 6
  assert sorted(loaders[0].bad_keys) == sorted(loaders[1].bad_keys)


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


def test_bad_keys_are_listed_once_each():
  loader = _loader(CountingSource(corrupt={3, 4, 17}))
  _take(loader.iterate(0), 15)  # three epochs: every corrupt index is met three times
  assert loader.bad_samples >= 9
  assert sorted(loader.bad_keys) == ['sample-17', 'sample-3', 'sample-4']


def test_a_broken_dataset_stops_with_one_error():
  loader = _loader(CountingSource(n=80, corrupt=range(80)))
  with pytest.raises(DatasetError, match='consecutive samples are unreadable'):
    next(loader.iterate(0))


def test_order_and_augmentation_are_functions_of_seed_and_step():
  kw = dict(flip=True, rotation_degrees=15, color_jitter=0.3, low_resolution_prob=0.5)
  a = _take(_loader(CountingSource(), **kw).iterate(3), 3)
  b = [_loader(CountingSource(), **kw).batch(step) for step in (3, 4, 5)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
  other_seed = next(_loader(CountingSource(), seed=4, **kw).iterate(3))
  assert not np.array_equal(a[0]['label'], other_seed['label'])


def test_augmentation_is_redrawn_each_epoch():
  class Gradient(CountingSource):
    def __getitem__(self, i):
      return np.tile(np.arange(8, dtype=np.uint8)[None, :, None], (8, 1, 3)), i

  loader = _loader(Gradient(), flip=True)
  batches = _take(loader.iterate(0), 10)

  def flipped_by_label(epoch_batches):
    return {
      int(label): bool(image[0, 0, 0] == 7)
      for b in epoch_batches
      for label, image in zip(b['label'], b['image'])
    }

  first, second = flipped_by_label(batches[:5]), flipped_by_label(batches[5:])
  assert 0.25 < np.mean(list(first.values())) < 0.75  # a fair coin per sample
  assert any(first[k] != second[k] for k in first)  # (seed, epoch, index) seeds the draw


def test_other_native_sizes_are_resized():
  source = CountingSource(size=20)
  batch = next(_loader(source, image_size=8).iterate(0))
  assert batch['image'].shape == (8, 8, 8, 3)
  # A constant image stays constant through INTER_AREA.
  np.testing.assert_array_equal(batch['image'][:, 3, 3, 0], batch['label'] % 251)
  up = next(_loader(CountingSource(size=4), image_size=8).iterate(0))
  assert up['image'].shape == (8, 8, 8, 3)


def test_grey_images_become_rgb():
  class Grey(CountingSource):
    def __getitem__(self, i):
      return np.full((8, 8), i, np.uint8), i

  batch = next(_loader(Grey()).iterate(0))
  assert batch['image'].shape == (8, 8, 8, 3)
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 2], batch['label'])


def test_uneven_process_split_is_refused():
  with pytest.raises(ValueError, match='does not split'):
    _loader(CountingSource(), global_batch_size=9, process_count=2)


def _synthetic_tiny_config(tmp_path):
  import ml_collections

  return ml_collections.ConfigDict(
    dict(
      source='synthetic',
      path='',
      data_dir=str(tmp_path),
      synthetic_variant='tiny',
      num_classes=0,
      split_by='identity',
      val_fraction=0.0,
      test_fraction=0.0,
    )
  )


def test_synthetic_and_tfds_sources_by_config(tmp_path):
  config = _synthetic_tiny_config(tmp_path)
  synthetic = sources.get_train_source(config)
  assert (len(synthetic), synthetic.num_classes) == (128, 16)
  image, label = synthetic[0]
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and 0 <= label < 16
  # The same data through the generic TFDS path.
  config.source, config.path = 'tfds', 'synthetic_faces/tiny'
  generic = sources.get_train_source(config)
  assert (len(generic), generic.num_classes) == (128, 16)
  np.testing.assert_array_equal(generic[7][0], synthetic[7][0])
  batch = next(_loader(generic, image_size=16, global_batch_size=16).iterate(0))
  assert batch['image'].shape == (16, 16, 16, 3)
  config.path = 'synthetic_faces/demo'  # registered but not generated there: no download
  with pytest.raises(DatasetError, match='not prepared.*tfds build'):
    sources.get_train_source(config)
  config.path = ''
  with pytest.raises(DatasetError, match='config.data.path'):
    sources.get_train_source(config)


def test_tfds_records_read_directly_equal_tfds_parser_and_damage_is_a_corrupt_sample(tmp_path):
  config = _synthetic_tiny_config(tmp_path)
  source = sources.get_train_source(config)
  raw_records = source._raw_records
  assert raw_records is not None  # the synthetic set stores PNGs: the direct path is taken
  direct = [source[i] for i in range(len(source))]
  source._raw_records = None  # TFDS's own parser, as for sources without raw records
  for i, (image, label) in enumerate(direct):
    expected_image, expected_label = source[i]
    np.testing.assert_array_equal(image, expected_image)
    assert label == expected_label
  source._raw_records = raw_records
  for (image, label), (expected_image, expected_label) in zip(
    source.read_many(range(len(source))), direct
  ):
    np.testing.assert_array_equal(image, expected_image)
    assert label == expected_label

  class Damaged(dict):
    def __getitems__(self, keys):
      return [self[k] for k in keys]

  damaged = Damaged({0: b'not a tf.train.Example', 1: raw_records[1][: len(raw_records[1]) // 2]})
  damaged[2] = raw_records[2]
  source._raw_records = damaged
  for index in (0, 1):
    with pytest.raises(CorruptSampleError, match=rf'\[{index}\]'):
      source[index]
  bad0, bad1, good = source.read_many([0, 1, 2])
  assert isinstance(bad0, CorruptSampleError) and isinstance(bad1, CorruptSampleError)
  np.testing.assert_array_equal(good[0], direct[2][0])

  class FailsAsBatch(Damaged):
    def __getitems__(self, keys):
      raise ValueError('one record of the batch is damaged')

  source._raw_records = FailsAsBatch(damaged)  # the batch call fails: single reads instead
  bad0, good = source.read_many([0, 2])
  assert isinstance(bad0, CorruptSampleError)
  np.testing.assert_array_equal(good[0], direct[2][0])


def test_recordio_without_path_names_the_setting():
  import ml_collections

  config = ml_collections.ConfigDict(dict(source='recordio', path='', data_dir='data'))
  with pytest.raises(DatasetError, match='config.data.path'):
    sources.get_train_source(config)
  config.path = '/nonexistent/ms1m'
  with pytest.raises(DatasetError, match='/nonexistent/ms1m'):
    sources.get_train_source(config)


def test_augmentation_draws_are_uniform_and_keyed_by_seed_epoch_index():
  from arcface_jax.data.pipeline import augmentation_draws

  draws = augmentation_draws(0, 0, np.arange(20000))
  assert draws.shape == (20000, 6) and 0 <= draws.min() and draws.max() < 1
  np.testing.assert_allclose(draws.mean(0), 0.5, atol=0.01)
  assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.03
  np.testing.assert_array_equal(augmentation_draws(0, 0, [5, 7]), draws[[5, 7]])
  for other in (
    augmentation_draws(1, 0, [5]),
    augmentation_draws(0, 1, [5]),
    augmentation_draws(-1, 0, [5]),
  ):
    assert not np.allclose(other, draws[5])


def test_non_square_images_are_centre_cropped_before_resizing():
  # E.g. a RecordIO packed from raw photos: a 16x8 image whose centred 8x8 square is a constant
  # and whose side columns are 0. Stretching would mix the zeros in; cropping keeps the constant.
  class Wide(CountingSource):
    def __getitem__(self, i):
      image = np.zeros((8, 16, 3), np.uint8)
      image[:, 4:12] = 100 + i % 100
      return image, i

  batch = next(_loader(Wide(), image_size=4).iterate(0))
  assert batch['image'].shape == (8, 4, 4, 3)
  np.testing.assert_array_equal(
    batch['image'],
    np.broadcast_to((100 + batch['label'] % 100)[:, None, None, None], batch['image'].shape),
  )
