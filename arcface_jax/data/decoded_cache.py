"""Decoded training samples kept in memory, for datasets small enough to hold them all.

Decoding is most of the input pipeline's work: a 32×32 PNG takes ~30 µs, a 112×112 JPEG several
times that, and reading the record a few more. On a host without an accelerator that work shares
the cores with the training step, so it is paid on every step. A dataset whose decoded images fit
in memory (the demo's, a fine-tuning set of a few thousand people) is decoded once, in the first
epoch, and every later epoch reads arrays.

Only what the source hands out is kept: the image before any augmentation, so the batches are the
same with the cache as without it. Whether a dataset fits is judged from its first decoded image
(its size × the number of samples); a dataset that would not fit is not cached at all, since a
cache holding a few percent of a shuffled dataset would serve a few percent of the reads.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
from absl import logging

from arcface_jax.data.errors import CorruptSampleError, read_or_error

Sample = tuple[np.ndarray, int]


class DecodedCache:
  """`source` with its decoded samples kept in memory once read, when they all fit in
  `budget_bytes`; unreadable samples are remembered too, so they are not read again.

  The cached images are read-only: a consumer that wrote into one would change every later epoch.
  Safe to share between reader threads; not meant for worker processes, each of which would hold
  a copy.
  """

  def __init__(self, source: Any, budget_bytes: int):
    self.source = source
    self.budget_bytes = budget_bytes
    self.enabled = budget_bytes > 0  # decided for good by the first decoded image
    self._decided = False
    self._samples: dict[int, Sample | CorruptSampleError] = {}
    self._bytes = 0
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  @property
  def cached_bytes(self) -> int:
    """Bytes of image data held so far."""
    return self._bytes

  def __getitem__(self, index: int) -> Sample:
    found = self._samples.get(index)
    if found is None:
      found = self._keep(index, read_or_error(self.source, index))
    if isinstance(found, CorruptSampleError):
      raise found
    return found

  def read_many(self, indices: Sequence[int]) -> list[Sample | CorruptSampleError]:
    """`self[i]` for each index, an unreadable one as its CorruptSampleError; the samples not
    cached yet are read in one call when the source has `read_many`."""
    found = [self._samples.get(int(index)) for index in indices]
    missing = [int(index) for index, sample in zip(indices, found) if sample is None]
    if missing:
      read_many = getattr(self.source, 'read_many', None)
      fetched = (
        read_many(missing)
        if read_many is not None
        else [read_or_error(self.source, index) for index in missing]
      )
      kept = iter([self._keep(index, sample) for index, sample in zip(missing, fetched)])
      found = [sample if sample is not None else next(kept) for sample in found]
    return found  # type: ignore[return-value]

  def _keep(self, index: int, sample: Sample | CorruptSampleError) -> Sample | CorruptSampleError:
    if not self.enabled:
      return sample
    if isinstance(sample, CorruptSampleError):
      self._samples[index] = sample
      return sample
    image, label = sample
    image = np.asarray(image)
    with self._lock:
      if not self._decided:
        self._decide(image)
        if not self.enabled:
          return sample
      if self._bytes + image.nbytes > self.budget_bytes:  # larger images than the first one
        return (image, int(label))
      frozen = image.view()  # read-only for the cache's users, the source's own array untouched
      frozen.setflags(write=False)
      kept = (frozen, int(label))
      if index not in self._samples:
        self._bytes += image.nbytes
      self._samples[index] = kept
    return kept

  def _decide(self, first_image: np.ndarray) -> None:
    self._decided = True
    expected = first_image.nbytes * len(self.source)
    mib = lambda n: n / 2**20
    if expected > self.budget_bytes:
      self.enabled = False
      logging.info(
        'decoded images not cached: %d samples of %s would take ~%.0f MiB, more than '
        'config.data.cache_mib=%.0f',
        len(self.source),
        'x'.join(map(str, first_image.shape)),
        mib(expected),
        mib(self.budget_bytes),
      )
      return
    logging.info(
      'caching decoded images in memory: %d samples of %s, ~%.0f MiB by the end of the first '
      'epoch (config.data.cache_mib=%.0f; 0 turns it off)',
      len(self.source),
      'x'.join(map(str, first_image.shape)),
      mib(expected),
      mib(self.budget_bytes),
    )
