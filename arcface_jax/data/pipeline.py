"""The training input pipeline (grain): every batch is a pure function of (seed, step).

Global step s lies in epoch e = s // steps_per_epoch. Epoch e has its own seeded order of the
dataset (`sampling.py`: a permutation, or identity-balanced P×K blocks, seeded by (seed, e)); step
s takes the next global_batch_size entries of it (the remainder at the epoch's end is dropped)
and this process keeps rows
[process_index · B_local, (process_index + 1) · B_local) of them. Augmentation draws are seeded by
(seed, e, sample index). Nothing depends on what was read before, so `iterate(k)` yields exactly
the batches k, k+1, ... of an uninterrupted `iterate(0)`: the checkpoint stores only the step.

Grain layout: MapDataset.range(steps) → map(read, decode, augment and stack one uint8 local
batch) → to_iter_dataset(ReadOptions: reader threads build whole batches ahead of the consumer),
or with worker processes mp_prefetch (each worker produces whole batches, interleaved in step
order, so the output is identical for any number of workers). The consumer only dequeues
finished batches; reader threads run nicer than it (`thread_priority.py`), so on a host without
an accelerator they take the cores the step leaves idle rather than preempt it. A bad sample
(`CorruptSampleError`) is replaced by the next entry of the same permutation that reads,
counted and logged. A dataset whose decoded images fit in `cache_bytes` is decoded in its first
epoch only (`decoded_cache.py`); the batches are the same either way.

Batches stay uint8 to the devices: the jitted step normalises them (`normalise.py`), which
moves a quarter of float32's bytes and takes a pass over every batch off the host's cores.
`prefetch_to_device` keeps the next batches' transfers in flight while the device computes.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import os
import weakref
from typing import Any, Callable, Generator, Iterator, TypeVar

import cv2
import grain
import numpy as np
from absl import logging

from arcface_jax.data.decode import center_crop_square, resize
from arcface_jax.data.decoded_cache import DecodedCache
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.sampling import IdentityBalancedOrder, UniformOrder
from arcface_jax.data.thread_priority import NicerThread

_MAX_SUBSTITUTIONS = 64  # this many unreadable samples in a row means the dataset is broken
_KEYS_KEPT = 10
_ENDLESS = 10**12  # steps; the trainer stops at num_steps long before
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijective, well-mixing hash of uint64 (wrap-around intended)."""
  z = z + _GOLDEN
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def augmentation_draws(seed: int, epoch: int, indices: np.ndarray, count: int = 6) -> np.ndarray:
  """Uniform [0, 1) draws (len(indices), count), a pure function of (seed, epoch, index).

  A counter-based hash, vectorised over the batch: seeding a numpy Generator per sample would
  cost more than decoding a small JPEG.
  """
  with np.errstate(over='ignore'):
    key = _mix(_mix(np.array([seed % 2**64], np.uint64)) + np.uint64(epoch))
    per_sample = _mix(key + np.asarray(indices, np.uint64))
    bits = _mix(per_sample[:, None] + np.arange(1, count + 1, dtype=np.uint64))
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _BatchMaker:
  """Global step → this process's batch {'image' uint8, 'label' int32, 'substitutions'}.

  Picklable (grain's worker processes receive a copy), and stateless apart from a cache of the
  current epoch's permutation, so any copy on any thread computes the same batch.
  """

  def __init__(
    self,
    source,
    *,
    order: UniformOrder | IdentityBalancedOrder,
    global_batch: int,
    local_batch: int,
    process_index: int,
    steps_per_epoch: int,
    seed: int,
    image_size: int,
    flip: bool,
    rotation_degrees: float,
    color_jitter: float,
    low_resolution_prob: float,
  ):
    self.source = source
    self.order = order
    self.num_samples = order.length  # entries per epoch (identity top-ups included)
    self.global_batch, self.local_batch = global_batch, local_batch
    self.process_index = process_index
    self.steps_per_epoch = steps_per_epoch
    self.seed = seed
    self.image_size = image_size
    self.flip, self.rotation = flip, rotation_degrees
    self.color_jitter, self.low_resolution_prob = color_jitter, low_resolution_prob
    self._perm: tuple[int, np.ndarray] | None = None

  def permutation(self, epoch: int) -> np.ndarray:
    cached = self._perm  # one read: reader threads may replace it concurrently
    if cached is None or cached[0] != epoch:
      cached = (epoch, self.order(epoch))
      self._perm = cached
    return cached[1]

  def slots(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(epoch, permutation, positions in it of this process's rows of `step`)."""
    epoch, batch_in_epoch = divmod(int(step), self.steps_per_epoch)
    first = batch_in_epoch * self.global_batch + self.process_index * self.local_batch
    return epoch, self.permutation(epoch), np.arange(first, first + self.local_batch)

  def read(
    self, perm: np.ndarray, slot: int, first: Any = None
  ) -> tuple[np.ndarray, int, int, int]:
    """(image, label, sample index, substitutions) for position `slot` of `perm`; `first` is
    the source's answer for that position when it was read already (`read_many`)."""
    for substitutions in range(_MAX_SUBSTITUTIONS):
      # Substitute the next entry of the same permutation: deterministic, so a resumed run reads
      # the same substitute, and the batch keeps its shape.
      index = int(perm[(slot + substitutions) % self.num_samples])
      try:
        if substitutions == 0 and first is not None:
          if isinstance(first, CorruptSampleError):
            raise first
          image, label = first
        else:
          image, label = self.source[index]
        return image, int(label), index, substitutions
      except CorruptSampleError as e:
        logging.log_first_n(logging.WARNING, 'skipping unreadable sample %s', _KEYS_KEPT, e)
        last = e
    raise DatasetError(
      f'{_MAX_SUBSTITUTIONS} consecutive samples are unreadable (last: {last}); '
      'the dataset looks broken as a whole'
    )

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    epoch, perm, slots = self.slots(step)
    firsts: list[Any] = [None] * len(slots)
    read_many = getattr(self.source, 'read_many', None)
    if read_many is not None:  # one call for the whole batch (TFDS: half the CPU of single reads)
      firsts = read_many([int(perm[int(slot) % self.num_samples]) for slot in slots])
    reads = [self.read(perm, int(slot), first) for slot, first in zip(slots, firsts)]
    draws = augmentation_draws(self.seed, epoch, np.array([r[2] for r in reads]))
    size = self.image_size
    images = np.empty((self.local_batch, size, size, 3), np.uint8)
    for row, (image, _, _, _) in enumerate(reads):
      images[row] = self.augment(np.asarray(image), draws[row])
    return {
      'image': images,
      'label': np.array([r[1] for r in reads], np.int32),
      'substitutions': np.array([r[3] for r in reads], np.int32),
    }

  def augment(self, image: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """RGB uint8 → RGB uint8 (S, S, 3), given this sample's `augmentation_draws` row."""
    size = self.image_size
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    if image.shape[0] != image.shape[1]:  # e.g. a packed folder of raw photos: crop, not stretch
      logging.log_first_n(
        logging.WARNING,
        'non-square training image (%dx%d): centre-cropped to a '
        'square before resizing, not stretched',
        1,
        image.shape[1],
        image.shape[0],
      )
      image = center_crop_square(image)
    image = resize(image, (size, size))
    if self.flip and draws[0] < 0.5:
      image = cv2.flip(image, 1)  # SIMD; a numpy [:, ::-1] copy costs ~20x more
    if self.rotation > 0:
      angle = (2 * draws[1] - 1) * self.rotation
      matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
      image = cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (size, size), borderMode=cv2.BORDER_REFLECT
      )
    if self.color_jitter > 0:
      brightness = 1 + (2 * draws[2] - 1) * self.color_jitter
      contrast = 1 + (2 * draws[3] - 1) * self.color_jitter
      as_float = image.astype(np.float32)
      mean = as_float.mean()
      as_float = ((as_float - mean) * contrast + mean) * brightness
      image = np.clip(as_float, 0, 255).astype(np.uint8)
    if draws[4] < self.low_resolution_prob:
      small = max(4, int(size * (0.25 + 0.5 * draws[5])))
      image = cv2.resize(
        cv2.resize(np.ascontiguousarray(image), (small, small), interpolation=cv2.INTER_AREA),
        (size, size),
        interpolation=cv2.INTER_LINEAR,
      )
    return image

  def bad_keys(self, step: int, row: int, count: int) -> list[Any]:
    """The keys of the `count` samples that `row` of `step` skipped (re-reads them)."""
    _, perm, slots = self.slots(step)
    keys = []
    for k in range(count):
      try:
        self.source[int(perm[(int(slots[row]) + k) % self.num_samples])]
      except CorruptSampleError as e:
        keys.append(e.key)
    return keys


class TrainLoader:
  """Batches {'image': uint8 RGB (B_local, S, S, 3), 'label': int32 (B_local,)} from a source.

  The images are not normalised: the consumer does it on the device (`normalise.py`).

  Args:
    source: random access, `len(source)`, `source[i] -> (RGB uint8 HWC, int label)`.
    global_batch_size: batch over all processes; each process gets its own B_local slice.
    seed: with the step, determines everything (order, augmentation).
    image_size: output side S; other native sizes are resized (INTER_AREA down, LINEAR up), a
      non-square image first centre-cropped to a square (decode.center_crop_square).
    flip, rotation_degrees, color_jitter, low_resolution_prob: augmentation.
    process_index, process_count: this host's slice of the global batch.
    images_per_identity: K > 0 makes every batch P identities × K images (`sampling.py`); needs
      `labels`, and a global batch that is a multiple of K. 0 = uniform shuffle.
    labels: every sample's label in source order, for identity-balanced batches.
    num_workers: grain worker processes (0 = reader threads in this process).
    prefetch: batches prepared ahead of the consumer.
    cache_bytes: keep the decoded images in memory when they all fit in this many bytes
      (`decoded_cache.py`); 0 = decode every time. Reader threads only: with worker processes
      each would hold its own copy, so the cache is off there.
  """

  def __init__(
    self,
    source,
    *,
    global_batch_size: int,
    seed: int,
    image_size: int,
    flip: bool = True,
    rotation_degrees: float = 0.0,
    color_jitter: float = 0.0,
    low_resolution_prob: float = 0.0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 2,
    images_per_identity: int = 0,
    labels: np.ndarray | None = None,
    cache_bytes: int = 0,
  ):
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(
        f'global batch {global_batch_size} does not split over {process_count} processes'
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} outside [0, {process_count})')
    order: IdentityBalancedOrder | UniformOrder
    if images_per_identity > 0:
      if global_batch_size % images_per_identity:
        raise ValueError(
          f'global batch {global_batch_size} is not a multiple of '
          f'config.data.images_per_identity={images_per_identity}'
        )
      if labels is None or len(labels) != len(source):
        raise ValueError('identity-balanced batches need `labels`, one per sample of the source')
      order = IdentityBalancedOrder(labels, images_per_identity, seed)
    else:
      order = UniformOrder(len(source), seed)
    num_samples = order.length
    if num_samples < global_batch_size:
      raise DatasetError(
        f'the dataset has {num_samples} samples, fewer than one global batch '
        f'of {global_batch_size}; lower config.train.batch_size'
      )
    self.local_batch = global_batch_size // process_count
    self.global_batch = global_batch_size
    self.steps_per_epoch = num_samples // global_batch_size
    self.num_workers = num_workers
    self.prefetch = max(1, prefetch)
    if cache_bytes > 0 and num_workers == 0:
      source = DecodedCache(source, cache_bytes)
    self._make = _BatchMaker(
      source,
      order=order,
      global_batch=global_batch_size,
      local_batch=self.local_batch,
      process_index=process_index,
      steps_per_epoch=self.steps_per_epoch,
      seed=seed,
      image_size=image_size,
      flip=flip,
      rotation_degrees=rotation_degrees,
      color_jitter=color_jitter,
      low_resolution_prob=low_resolution_prob,
    )
    self.bad_samples = 0
    self.bad_keys: list[Any] = []

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The batch of `step`, computed directly in this thread (what `iterate` yields)."""
    out = self._make(step)
    self._account(step, out.pop('substitutions'))
    return out

  def _account(self, step: int, substitutions: np.ndarray) -> None:
    if not substitutions.any():
      return
    self.bad_samples += int(substitutions.sum())
    # Workers cannot hand back Python objects per row cheaply, so the few keys are re-read here.
    for row in np.nonzero(substitutions)[0]:
      if len(self.bad_keys) >= _KEYS_KEPT:
        break
      for key in self._make.bad_keys(step, int(row), int(substitutions[row])):
        if len(self.bad_keys) < _KEYS_KEPT and key not in self.bad_keys:
          logging.warning(
            'unreadable sample %s replaced (step %d); %d so far', key, step, self.bad_samples
          )
          self.bad_keys.append(key)

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The batches of steps start_step, start_step + 1, ... (endless)."""
    dataset = grain.MapDataset.range(start_step, start_step + _ENDLESS).map(NicerThread(self._make))
    # Reader threads each build whole batches, one per core; the buffer holds `prefetch`
    # finished batches beyond the ones in flight. Decoding (cv2, PNG/JPEG) releases the GIL.
    threads = max(1, min(os.cpu_count() or 1, 16))
    iterable = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads + self.prefetch)
    )
    if self.num_workers > 0:
      iterable = iterable.mp_prefetch(
        grain.MultiprocessingOptions(
          num_workers=self.num_workers, per_worker_buffer_size=self.prefetch
        )
      )
    iterator = iter(iterable)
    _OPEN_ITERATORS.add(iterator)
    try:
      for step, out in enumerate(iterator, start=start_step):
        self._account(step, out.pop('substitutions'))
        yield out
    finally:
      # Stop prefetch threads and workers now rather than in a finaliser.
      _OPEN_ITERATORS.discard(iterator)
      iterator.close()


_Placed = TypeVar('_Placed')


def prefetch_to_device(
  batches: Iterator[dict[str, np.ndarray]],
  place: Callable[[dict[str, np.ndarray]], _Placed],
  depth: int = 2,
) -> Generator[_Placed, None, None]:
  """`place(batch)` for each host batch, issued `depth - 1` batches ahead of the consumer.

  `place` starts the host-to-device transfer (e.g. `parallel.global_batch`, which puts each
  process's rows on its devices with the batch sharding) and returns without waiting for it. With
  depth 2 (double buffering) the next batch is already on its way when the current step is
  dispatched, and the one after is taken from the host pipeline and sent while that step runs, so
  the step never waits for a transfer. Closing this iterator closes `batches`.
  """
  if depth < 1:
    raise ValueError(f'prefetch depth {depth} must be at least 1')
  queue: collections.deque = collections.deque()
  try:
    for batch in itertools.islice(batches, depth):
      queue.append(place(batch))
    while queue:
      yield queue.popleft()
      for batch in itertools.islice(batches, 1):
        queue.append(place(batch))
  finally:
    close = getattr(batches, 'close', None)
    if close is not None:
      close()


# Iterators still open at interpreter exit are closed while grain's modules are intact: its
# finalisers fail noisily once module teardown has begun.
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()
