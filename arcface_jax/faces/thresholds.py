"""Thresholds for "same person" and "unknown", calibrated on people the model never trained on.

A cosine threshold means nothing until it is tied to an error rate measured on strangers:
impostor pairs of training photos score far lower than pairs of new people do, so a threshold
set on them names strangers. Calibration photos therefore come from identities not used in
training: the run's held-out identities (the synthetic held-out people, or the val split of a
folder run split by identity, which training's verification also uses), or photos the user gives
(`enroll --calibrate DIR`, `verify --calibrate DIR`).

A calibration is kept with its model: `faces calibrate --model M --photos DIR` stores one (beside
an export as `<file>.calibration.npz`, inside a workdir under `faces_calibration/`), and
`python -m arcface_jax.export` stores the run's held-out people beside the file it writes, so an
exported model answers "unknown" without a guessed number. A kept calibration is used before the
held-out people; it records the weight fingerprint and is ignored (with a warning) for any other
weights.

- verify: the threshold at a false-accept rate (FAR) over every impostor pair of the
  calibration photos (pairs of different people);
- identify (open set): each calibration photo's highest score against the whole gallery; the
  threshold at a false-positive identification rate (FPIR) over those. More people in the
  gallery → higher top scores for strangers → a higher threshold at the same FPIR, so it is
  recomputed whenever people are enrolled.

Decision rule: a score strictly above the threshold accepts. At rate r over n calibration scores
the threshold is the (k+1)-th highest score, k = ⌊r·n⌋, so at most k of them (a fraction ≤ r)
are accepted. With n < 1/r the rate cannot be measured: the threshold is the highest calibration
score (none accepted, the most conservative threshold the samples give) and `note` says so;
every answer carries its `Threshold`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging
from etils import epath

if TYPE_CHECKING:
  from arcface_jax.data.sources import Source

DEFAULT_FAR = 1e-3
DEFAULT_FPIR = 1e-2
MAX_CALIBRATION_IMAGES = 2000  # of the held-out split; beyond this the rates hardly move


class CalibrationError(ValueError):
  """No threshold can be calibrated; the message says what to pass instead."""


@dataclasses.dataclass(frozen=True)
class Threshold:
  """A cosine threshold and what it means."""

  value: float
  kind: str  # 'FAR' (verify), 'FPIR' (identify) or 'given' (set by the user)
  rate: float | None = None  # the requested FAR or FPIR
  achieved: float | None = None  # the rate measured on the calibration scores at `value`
  samples: int = 0  # calibration scores it was set on (impostor pairs or photos)
  source: str = ''  # where the calibration photos came from
  note: str = ''  # e.g. too few samples for the requested rate

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def describe(self) -> str:
    if self.kind == 'given':
      return f'threshold {self.value:.4f} (given)'
    text = (
      f'threshold {self.value:.4f} at {self.kind} {self.rate:g} (measured '
      f'{self.achieved:g} on {self.samples} calibration scores from {self.source})'
    )
    return text + (f'; {self.note}' if self.note else '')


def given(value: float) -> Threshold:
  if not -1.0 <= value <= 1.0:
    raise CalibrationError(f'threshold {value} is not a cosine; expected -1 .. 1')
  return Threshold(value=float(value), kind='given')


def threshold_at_rate(scores: np.ndarray, rate: float, kind: str, source: str) -> Threshold:
  """The threshold accepting at most a fraction `rate` of `scores` (impostor or stranger scores)."""
  if not 0 < rate < 1:
    raise CalibrationError(f'{kind} {rate} must be between 0 and 1')
  scores = np.sort(np.asarray(scores, np.float64).ravel())[::-1]
  n = len(scores)
  if n == 0:
    raise CalibrationError(f'no calibration scores from {source} to set a {kind} threshold')
  allowed = math.floor(rate * n + 1e-9)
  note = ''
  if allowed == 0:
    needed = math.ceil(1 / rate - 1e-9)
    note = (
      f'only {n} calibration scores; {kind} {rate:g} needs at least {needed}, so the '
      'highest calibration score is used (the most conservative threshold available)'
    )
    value = scores[0]
  else:
    value = scores[allowed]  # the (k+1)-th highest: at most k scores lie strictly above it
  achieved = float(np.count_nonzero(scores > value)) / n
  return Threshold(
    value=float(value),
    kind=kind,
    rate=float(rate),
    achieved=achieved,
    samples=n,
    source=source,
    note=note,
  )


def impostor_scores(embeddings: np.ndarray, identities: np.ndarray) -> np.ndarray:
  """Cosines of every pair of L2-normalised embeddings from different identities."""
  similarity = embeddings @ embeddings.T
  different = identities[:, None] != identities[None, :]
  upper = np.triu(np.ones_like(different), k=1)
  return similarity[different & upper]


@dataclasses.dataclass
class CalibrationSet:
  """Embeddings of photos of people neither trained on nor (for identify) enrolled."""

  embeddings: np.ndarray  # (N, D) float32, L2-normalised
  identities: list[str]  # one per row: the person (folder) each photo shows
  source: str

  def __len__(self) -> int:
    return len(self.embeddings)

  def far_threshold(self, far: float = DEFAULT_FAR) -> Threshold:
    ids = np.array(self.identities)
    scores = impostor_scores(self.embeddings, ids)
    if len(set(self.identities)) < 2:
      raise CalibrationError(
        f'calibration photos from {self.source} show fewer than two people; '
        'a FAR threshold needs impostor pairs of different people'
      )
    return threshold_at_rate(scores, far, 'FAR', self.source)

  def without(self, names: set[str]) -> 'CalibrationSet':
    """The rows of people not in `names` (someone enrolled is not a stranger)."""
    keep = np.array([i not in names for i in self.identities], bool)
    return CalibrationSet(
      self.embeddings[keep], [i for i, k in zip(self.identities, keep) if k], self.source
    )


def _heldout_images(config: Any) -> tuple[np.ndarray, list[str], str] | None:
  """(uint8 images, identity of each, description) of the run's held-out people, or None."""
  data = config.data
  source: Source
  if data.source == 'synthetic':
    from arcface_jax.data import synthetic

    source = synthetic.load_synthetic(data.synthetic_variant, data.data_dir, 'test')
    where = f'the held-out synthetic identities ({data.synthetic_variant})'
  elif data.source in ('folder', 'tfds') and data.split_by == 'identity' and data.val_fraction > 0:
    from arcface_jax.data import sources

    source = sources.get_source(data, 'val')
    where = f'the held-out val identities of {data.path}'
  else:
    return None
  from arcface_jax.data.sources import source_labels

  labels = source_labels(source)
  # A deterministic spread over the whole split when it is larger than needed.
  chosen = np.arange(len(source))
  if len(chosen) > MAX_CALIBRATION_IMAGES:
    chosen = np.linspace(0, len(source) - 1, MAX_CALIBRATION_IMAGES).round().astype(int)
  from arcface_jax.data.decode import resize
  from arcface_jax.data.errors import CorruptSampleError

  size = data.image_size
  images, identities = [], []
  names = getattr(source, 'identities', None)
  for index in chosen:
    try:
      image, _ = source[int(index)]
    except CorruptSampleError:
      continue
    images.append(resize(np.asarray(image, np.uint8), (size, size)))
    label = int(labels[index])
    identities.append(names[label] if names is not None else f'heldout_{label}')
  if not images:
    return None
  return np.stack(images), identities, where


def cache_path(workdir: str, step: int, fingerprint: str) -> str:
  return os.path.join(workdir, 'faces_calibration', f'step_{step}_{fingerprint}.npz')


KEPT_SUFFIX = '.calibration.npz'  # beside an exported model: <file>.jax_export.calibration.npz


def kept_path(model: Any) -> str:
  """Where a calibration kept with `model` lives: beside an export, or inside a workdir (one
  per weights fingerprint, so a later checkpoint never uses embeddings of an earlier one)."""
  if model.kind == 'export':
    return model.path + KEPT_SUFFIX
  return os.path.join(model.path, 'faces_calibration', f'kept_{model.info.fingerprint}.npz')


def write_calibration(path: str, calibration: CalibrationSet, fingerprint: str) -> None:
  """Stores the embeddings (float32), each row's person, their source and the model's weight
  fingerprint as a NumPy .npz (no pickle), written whole or not at all."""
  from arcface_jax import paths

  buffer = io.BytesIO()
  meta = {
    'identities': list(calibration.identities),
    'source': calibration.source,
    'fingerprint': fingerprint,
  }
  np.savez(
    buffer, embeddings=calibration.embeddings.astype(np.float32), meta=np.array(json.dumps(meta))
  )
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  paths.write_bytes_atomic(path, buffer.getvalue())


def read_calibration(path: str, fingerprint: str) -> CalibrationSet | None:
  """The calibration at `path` if it is readable and was made with weights `fingerprint`; None
  (with a warning naming the file) otherwise, so a damaged or stale file is never used."""
  try:
    with np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False) as data:
      meta = json.loads(str(data['meta']))
      embeddings = data['embeddings'].astype(np.float32)
    identities, source = list(meta['identities']), str(meta['source'])
    made_with = meta.get('fingerprint', fingerprint)  # caches written before it was stored
  except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('%s: unreadable calibration (%s); not used', path, e)
    return None
  if made_with != fingerprint:
    logging.warning(
      '%s was calibrated with other weights (fingerprint %s, the model has %s); not used. '
      'Calibrate again: python -m arcface_jax.faces calibrate --model M --photos DIR',
      path,
      made_with,
      fingerprint,
    )
    return None
  if embeddings.ndim != 2 or len(identities) != len(embeddings):
    logging.warning(
      '%s: %d identities for %d embeddings; not used', path, len(identities), len(embeddings)
    )
    return None
  return CalibrationSet(embeddings, identities, source)


def kept_calibration(model: Any) -> CalibrationSet | None:
  """The calibration kept with `model` (`faces calibrate`, or written by the export), or None."""
  path = kept_path(model)
  if not epath.Path(path).exists():
    return None
  return read_calibration(path, model.info.fingerprint)


def heldout_calibration(model: Any) -> CalibrationSet | None:
  """The calibration kept with `model`, else the run's held-out people embedded by a workdir
  model, cached in the workdir.

  The cache is keyed by the checkpoint step and the weight fingerprint, so it is computed once
  per checkpoint. None for an export without a kept calibration and for runs without held-out
  identities.
  """
  kept = kept_calibration(model)
  if kept is not None:
    return kept
  if model.kind != 'workdir':
    return None
  path = cache_path(model.path, model.step, model.info.fingerprint)
  if epath.Path(path).exists():
    cached = read_calibration(path, model.info.fingerprint)
    if cached is not None:
      return cached
    logging.warning('computing the calibration again')
  found = _heldout_images(model.config)
  if found is None:
    return None
  images, identities, where = found
  logging.info(
    'calibrating thresholds on %d photos of %d people: %s (once per checkpoint)',
    len(images),
    len(set(identities)),
    where,
  )
  calibration = CalibrationSet(model.embed_crops(images), identities, where)
  try:
    write_calibration(path, calibration, model.info.fingerprint)
  except OSError as e:  # a read-only workdir: calibrate again next time
    logging.warning('cannot cache the calibration in %s (%s)', path, e)
  return calibration
