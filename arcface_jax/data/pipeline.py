"""The training input pipeline (grain): a deterministic function of (seed, step).

Sample position p of this process maps to global step p // B_local; that step's batch is a slice of
epoch e's permutation (a fresh seeded permutation every epoch, the remainder dropped), and this
process takes its own B_local rows of it. Per-sample augmentation randomness is seeded by (seed,
epoch, index). So `iterate(k)` yields exactly the batches k, k+1, ... of an uninterrupted run,
which is what makes resume exact: the checkpoint stores only the step.

Decoding and augmentation run in grain's reader threads (or worker processes with
`num_workers > 0`) and batches are prefetched, so the host works ahead of the device.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Iterator

import cv2
import grain
import numpy as np
from absl import logging

from arcface_jax.data.errors import CorruptSampleError, DatasetError

_MAX_SUBSTITUTIONS = 64
_KEYS_KEPT = 10


class _LoadSample:
  """Position → (normalised float32 image, label, substitutions); picklable for workers."""

  def __init__(self, source, *, num_samples: int, global_batch: int, local_batch: int,
               process_index: int, steps_per_epoch: int, seed: int, image_size: int,
               mean: float, std: float, flip: bool, rotation_degrees: float,
               color_jitter: float, low_resolution_prob: float):
    self.source = source
    self.num_samples = num_samples
    self.global_batch, self.local_batch = global_batch, local_batch
    self.process_index = process_index
    self.steps_per_epoch = steps_per_epoch
    self.seed = seed
    self.image_size = image_size
    self.mean, self.std = np.float32(mean), np.float32(std)
    self.flip, self.rotation = flip, rotation_degrees
    self.color_jitter, self.low_resolution_prob = color_jitter, low_resolution_prob
    self.bad_keys: list[Any] = []
    self._lock = threading.Lock()

  @functools.lru_cache(maxsize=2)
  def permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)

  def __getstate__(self):
    state = dict(self.__dict__)
    del state['_lock']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    step, row = divmod(int(position), self.local_batch)
    epoch, batch_in_epoch = divmod(step, self.steps_per_epoch)
    perm = self.permutation(epoch)
    slot = batch_in_epoch * self.global_batch + self.process_index * self.local_batch + row
    substitutions = 0
    while True:
      index = int(perm[(slot + substitutions) % self.num_samples])
      try:
        image, label = self.source[index]
        break
      except CorruptSampleError as e:
        # Deterministic substitute: the next sample of the permutation, so the batch keeps its
        # shape and a resumed run sees the same substitute.
        substitutions += 1
        with self._lock:
          if len(self.bad_keys) < _KEYS_KEPT:
            self.bad_keys.append(e.key)
        logging.log_first_n(logging.WARNING, 'skipping unreadable sample %s', 10, e)
        if substitutions >= _MAX_SUBSTITUTIONS:
          raise DatasetError(f'{_MAX_SUBSTITUTIONS} consecutive samples are unreadable (last: '
                             f'{e}); the dataset looks broken as a whole') from None
    rng = np.random.default_rng((self.seed, epoch, index))
    image = self.augment(np.asarray(image), rng)
    image = (image.astype(np.float32) - self.mean) / self.std
    return {'image': image, 'label': np.int32(label), 'substitutions': np.int32(substitutions)}

  def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 → RGB uint8 at image_size; the draws happen in a fixed order (determinism)."""
    size = self.image_size
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[0] != size or image.shape[1] != size:
      shrink = image.shape[0] > size
      image = cv2.resize(image, (size, size),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    draws = rng.uniform(size=6)
    if self.flip and draws[0] < 0.5:
      image = image[:, ::-1]
    if self.rotation > 0:
      angle = (2 * draws[1] - 1) * self.rotation
      matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
      image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size),
                             borderMode=cv2.BORDER_REFLECT)
    if self.color_jitter > 0:
      brightness = 1 + (2 * draws[2] - 1) * self.color_jitter
      contrast = 1 + (2 * draws[3] - 1) * self.color_jitter
      as_float = image.astype(np.float32)
      as_float = (as_float - as_float.mean()) * contrast + as_float.mean() * brightness
      image = np.clip(as_float, 0, 255).astype(np.uint8)
    if draws[4] < self.low_resolution_prob:
      small = max(4, int(size * (0.25 + 0.5 * draws[5])))
      image = cv2.resize(cv2.resize(np.ascontiguousarray(image), (small, small),
                                    interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


class TrainLoader:
  """Batches {'image': float32 (B_local, S, S, 3), 'label': int32 (B_local,)} from a source."""

  def __init__(self, source, *, global_batch_size: int, seed: int, image_size: int,
               mean: float = 127.5, std: float = 127.5, flip: bool = True,
               rotation_degrees: float = 0.0, color_jitter: float = 0.0,
               low_resolution_prob: float = 0.0, process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, prefetch: int = 2):
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} does not split over {process_count} '
                       'processes')
    num_samples = len(source)
    if num_samples < global_batch_size:
      raise DatasetError(f'the dataset has {num_samples} samples, fewer than one global batch '
                         f'of {global_batch_size}; lower config.train.batch_size')
    self.local_batch = global_batch_size // process_count
    self.steps_per_epoch = num_samples // global_batch_size
    self.num_workers = num_workers
    self.prefetch = prefetch
    self._load = _LoadSample(
        source, num_samples=num_samples, global_batch=global_batch_size,
        local_batch=self.local_batch, process_index=process_index,
        steps_per_epoch=self.steps_per_epoch, seed=seed, image_size=image_size, mean=mean,
        std=std, flip=flip, rotation_degrees=rotation_degrees, color_jitter=color_jitter,
        low_resolution_prob=low_resolution_prob)
    self.bad_samples = 0

  @property
  def bad_keys(self) -> list[Any]:
    return list(self._load.bad_keys)

  def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches of steps start_step, start_step + 1, ... (endless)."""
    first = start_step * self.local_batch
    # An effectively endless range; the trainer stops at num_steps.
    dataset = grain.MapDataset.range(first, first + self.local_batch * 10**12)
    threads = max(1, min(16, self.local_batch))
    # Samples are read and decoded by grain's reader threads, then batched in order.
    iterable = dataset.map(self._load).to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(self.prefetch, 1) * self.local_batch))
    iterable = iterable.batch(self.local_batch, drop_remainder=True)
    if self.num_workers > 0:
      iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
    for batch in iterable:
      self.bad_samples += int(batch.pop('substitutions').sum())
      yield batch
