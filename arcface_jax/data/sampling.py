"""The order in which an epoch visits the dataset: uniform shuffles or identity-balanced P×K blocks.

Both are pure functions of (seed, epoch) with a length fixed across epochs, which is what lets the
pipeline compute any step's batch directly (and a resumed run continue exactly).

- `UniformOrder`: a seeded permutation of all samples (the margin softmax losses).
- `IdentityBalancedOrder`: consecutive blocks of K images of one identity, blocks shuffled, so a
  global batch of P·K holds P identities with K images each — what the triplet loss and the
  intra/inter terms need to find positives (FaceNet's batches, the "P×K" sampler of person
  re-identification). An identity with fewer than K images (or a count not divisible by K) is
  topped up with repeats of its own images drawn at random, so every image is seen once an epoch
  and no block mixes identities. Samples labelled −1 (unreadable) are left out.
"""

from __future__ import annotations

import numpy as np

from arcface_jax.data.errors import DatasetError


class UniformOrder:
  """Every sample once per epoch, in a permutation seeded by (seed, epoch)."""

  def __init__(self, num_samples: int, seed: int):
    self.length = int(num_samples)
    self.seed = seed

  def __call__(self, epoch: int) -> np.ndarray:
    return np.random.default_rng((self.seed, epoch)).permutation(self.length)


class IdentityBalancedOrder:
  """Blocks of `images_per_identity` sample indices sharing a label, in a seeded block order.

  Args:
    labels: the label of every sample, in source order (read without decoding).
    images_per_identity: K; the global batch must be a multiple of it so blocks are not cut.
    seed: with the epoch, determines the within-identity shuffles, top-ups and block order.
  """

  def __init__(self, labels: np.ndarray, images_per_identity: int, seed: int):
    labels = np.asarray(labels, np.int64)
    if images_per_identity < 1:
      raise ValueError(f'images_per_identity={images_per_identity} must be positive')
    if labels.ndim != 1 or len(labels) == 0:
      raise DatasetError(
        f'identity-balanced sampling needs one label per sample; got {labels.shape}'
      )
    self.k = int(images_per_identity)
    self.seed = seed
    # Samples grouped by identity (stable: source order within one), with each group's extent;
    # samples whose label could not be read (−1) are left out.
    known = np.nonzero(labels >= 0)[0]
    if len(known) == 0:
      raise DatasetError('identity-balanced sampling: no sample has a readable label')
    self._by_label = known[np.argsort(labels[known], kind='stable')]
    _, self._starts, self._counts = np.unique(
      labels[self._by_label], return_index=True, return_counts=True
    )
    self._padded = -(-self._counts // self.k) * self.k  # each identity's length, a multiple of K
    self.length = int(self._padded.sum())
    self.num_identities = len(self._counts)

  def __call__(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng((self.seed, epoch, self.k))
    group = np.repeat(np.arange(self.num_identities), self._counts)
    # Top-ups: `padded − count` extra entries per identity, each one of its images at random.
    extra_group = np.repeat(np.arange(self.num_identities), self._padded - self._counts)
    extra_members = self._starts[extra_group] + np.floor(
      rng.random(len(extra_group)) * self._counts[extra_group]
    ).astype(np.int64)
    members = np.concatenate([np.arange(len(self._by_label)), extra_members])
    groups = np.concatenate([group, extra_group])
    # Within each identity: its real images in random order (keys in [0, 1)), then the top-ups
    # (keys in [1, 2)); identities stay contiguous and each spans a multiple of K entries.
    keys = np.concatenate([rng.random(len(group)), 1 + rng.random(len(extra_group))])
    ordered = members[np.lexsort((keys, groups))]
    blocks = self._by_label[ordered].reshape(-1, self.k)
    return blocks[rng.permutation(len(blocks))].reshape(-1)
