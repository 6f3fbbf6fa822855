"""The decoded-image cache: the same batches as decoding every time, each sample read once, and
no cache at all for a dataset that would not fit."""

import collections
import os

import numpy as np
import pytest

from arcface_jax.data.decoded_cache import DecodedCache
from arcface_jax.data.errors import CorruptSampleError, read_or_error
from arcface_jax.data.pipeline import TrainLoader

SIDE = 8
IMAGE_BYTES = SIDE * SIDE * 3


class ReadCountingSource:
  """Sample i: a pseudo-random 8×8 image and label i % 7; counts the reads of each index, and
  optionally answers a whole batch at once (`read_many`, as the TFDS source does)."""

  def __init__(self, n=40, corrupt=(), batch_reads=False):
    self.n, self.corrupt = n, set(corrupt)
    self.reads = collections.Counter()
    self.batch_calls = 0
    if batch_reads:
      self.read_many = self._read_many

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.reads[i] += 1
    if i in self.corrupt:
      raise CorruptSampleError(f'sample-{i}', 'bad PNG')
    return np.random.default_rng(i).integers(0, 256, (SIDE, SIDE, 3), np.uint8), i % 7

  def _read_many(self, indices):
    self.batch_calls += 1
    return [read_or_error(self, i) for i in indices]


def _loader(source, cache_bytes):
  return TrainLoader(
    source,
    global_batch_size=8,
    seed=5,
    image_size=SIDE,
    flip=True,
    rotation_degrees=10,
    color_jitter=0.2,
    cache_bytes=cache_bytes,
  )


@pytest.mark.parametrize('batch_reads', [False, True], ids=['single reads', 'batch reads'])
def test_cached_batches_equal_decoding_every_time_and_each_sample_is_read_once(batch_reads):
  corrupt = {3, 4, 17}
  plain = ReadCountingSource(corrupt=corrupt, batch_reads=batch_reads)
  cached = ReadCountingSource(corrupt=corrupt, batch_reads=batch_reads)
  loaders = _loader(plain, 0), _loader(cached, 40 * IMAGE_BYTES)
  for step in range(15):  # three epochs of 5 steps
    a, b = (loader.batch(step) for loader in loaders)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # augmentation drawn the same
  assert loaders[0].bad_samples == loaders[1].bad_samples > 0
  assert sorted(loaders[0].bad_keys) == sorted(loaders[1].bad_keys)
  assert max(plain.reads.values()) >= 3  # decoded every epoch
  assert set(cached.reads) == set(range(40)) and max(cached.reads.values()) == 1
  if batch_reads:
    assert cached.batch_calls >= 1


def test_reader_threads_sharing_the_cache_build_the_same_batches():
  plain, cached = ReadCountingSource(corrupt={9}), ReadCountingSource(corrupt={9})
  iterators = [_loader(plain, 0).iterate(0), _loader(cached, 40 * IMAGE_BYTES).iterate(0)]
  for _ in range(15):
    a, b = (next(iterator) for iterator in iterators)
    assert all(np.array_equal(a[k], b[k]) for k in a)
  for iterator in iterators:
    iterator.close()
  # Each reader thread may read a sample that no thread has cached yet, once; the plain source
  # is read every epoch.
  threads = max(1, min(os.cpu_count() or 1, 16))
  assert max(cached.reads.values()) <= threads and max(plain.reads.values()) >= 3


def test_a_dataset_that_does_not_fit_is_not_cached_at_all():
  source = ReadCountingSource()
  cache = DecodedCache(source, budget_bytes=40 * IMAGE_BYTES - 1)  # one image short
  for _ in range(2):
    for i in range(40):
      cache[i]
  assert cache.cached_bytes == 0 and not cache.enabled
  assert set(source.reads.values()) == {2}


def test_cached_images_are_read_only_and_keep_their_values():
  cache = DecodedCache(ReadCountingSource(), budget_bytes=10**6)
  image, label = cache[5]
  expected, expected_label = ReadCountingSource()[5]
  with pytest.raises(ValueError, match='read-only'):
    image[0, 0, 0] = 1
  np.testing.assert_array_equal(cache[5][0], expected)
  assert label == expected_label
  assert cache.cached_bytes == IMAGE_BYTES


def test_a_corrupt_sample_is_remembered_and_raised_again():
  source = ReadCountingSource(corrupt={2})
  cache = DecodedCache(source, budget_bytes=10**6)
  cache[0]
  for _ in range(3):
    with pytest.raises(CorruptSampleError, match='sample-2'):
      cache[2]
  assert source.reads[2] == 1


def test_the_sources_own_array_stays_writable():
  stored = np.zeros((SIDE, SIDE, 3), np.uint8)

  class StoringSource:
    def __len__(self):
      return 1

    def __getitem__(self, i):
      return stored, 0

  image, _ = DecodedCache(StoringSource(), budget_bytes=10**6)[0]
  assert not image.flags.writeable and stored.flags.writeable
