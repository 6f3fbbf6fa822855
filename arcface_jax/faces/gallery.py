"""`Gallery`: the people a recognizer can name, with the model they were embedded by and the
calibration that sets "unknown".

Each person is compared through a template: the L2-normalised mean of their enrolled
embeddings (the usual open-set practice, e.g. IJB-B/C templates); a face's score for a person is
its cosine with that template, and the answer is the best person if that score is above the
threshold, else "unknown". The threshold is the open-set one at a stated FPIR (see
`faces.thresholds`): every calibration photo's highest score over the gallery's templates, so it
is recomputed whenever people are enrolled, and the calibration embeddings are kept in the file.
Calibration photos of someone who is enrolled (same name) are left out: they are not strangers.

File format (no pickle): a NumPy `.npz` archive with `embeddings` (N, D) float32, `labels` (N,)
int32 (index of the person), `calibration` (M, D) float32, and `meta`, a JSON text holding the
format version, names, photo of each embedding, calibration identities and source, the model's
name, embedding size and fingerprint, and the FPIR. It is validated when read, and a gallery made
with another model (another fingerprint) is refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from typing import Any, Sequence

import numpy as np

from arcface_jax import paths as uri_paths
from arcface_jax.faces import thresholds
from arcface_jax.faces.thresholds import CalibrationError, CalibrationSet, Threshold
from arcface_jax.model_info import ModelInfo

FORMAT_VERSION = 1
UNKNOWN = 'unknown'


class GalleryError(ValueError):
  """A gallery cannot be read, built or used; the message names the file or the cause."""


@dataclasses.dataclass
class Gallery:
  """Enrolled people (use `Gallery.enroll` / `Gallery.load`, not the constructor)."""

  names: list[str]  # the people, sorted
  embeddings: np.ndarray  # (N, D) float32, L2-normalised, one per enrolled face
  labels: np.ndarray  # (N,) int32 index into `names`
  photos: list[str]  # the photo each embedding came from
  model_name: str
  embedding_dim: int
  fingerprint: str
  calibration: CalibrationSet | None = None
  fpir: float = thresholds.DEFAULT_FPIR
  threshold: Threshold | None = None  # the FPIR threshold, recomputed on every change
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # last enrol only
  path: str = ''

  # ------------------------------------------------------------------ building

  @classmethod
  def enroll(
    cls,
    recognizer: Any,
    people: Any,
    *,
    calibrate: Any = None,
    aligned: bool | None = None,
    fpir: float = thresholds.DEFAULT_FPIR,
    progress: bool = False,
  ) -> 'Gallery':
    """A gallery of `people`: a folder with one sub-folder per person (read recursively) or a
    mapping name → photos (paths or RGB arrays). The largest face of each photo is enrolled;
    unreadable photos and photos without a face are skipped and listed in `skipped`.

    `calibrate`: photos of people neither trained on nor enrolled (a folder or a list) to set
    the threshold; by default the model's held-out people (a training workdir), if it has any.
    """
    info = recognizer.info
    gallery = cls(
      names=[],
      embeddings=np.zeros((0, info.embedding_dim), np.float32),
      labels=np.zeros((0,), np.int32),
      photos=[],
      model_name=info.model_name,
      embedding_dim=info.embedding_dim,
      fingerprint=info.fingerprint,
      fpir=fpir,
    )
    if calibrate is not None:
      gallery.calibration = recognizer.calibration_from(
        calibrate, aligned=aligned, progress=progress
      )
    else:
      gallery.calibration = recognizer.calibration
    gallery.add(recognizer, people, aligned=aligned, progress=progress)
    return gallery

  def add(
    self, recognizer: Any, people: Any, *, aligned: bool | None = None, progress: bool = False
  ) -> None:
    """Enrols more photos (new people or more photos of enrolled ones); re-sets the threshold."""
    from arcface_jax.faces.recognizer import embed_people

    self.check_model(recognizer.info, recognizer.model.path)
    found = embed_people(
      recognizer, people, aligned=aligned, every_face=False, progress=progress, what='gallery'
    )
    self.skipped = found.skipped
    if not len(found.embeddings):
      raise GalleryError(
        f'no face could be enrolled from {found.source} ('
        f'{len(found.skipped)} photos skipped); expected one sub-folder of '
        'photos per person'
      )
    if UNKNOWN in found.identities:
      raise GalleryError(
        f'a person named {UNKNOWN!r} in {found.source} cannot be told apart '
        'from the answer for strangers: rename the folder'
      )
    names = sorted(set(self.names) | set(found.identities))
    remap = np.array([names.index(n) for n in self.names], np.int32)
    old_labels = remap[self.labels] if len(self.labels) else np.zeros((0,), np.int32)
    new_labels = np.array([names.index(n) for n in found.identities], np.int32)
    self.names = names
    self.embeddings = np.concatenate([self.embeddings, found.embeddings]).astype(np.float32)
    self.labels = np.concatenate([old_labels, new_labels]).astype(np.int32)
    self.photos = self.photos + found.origins
    self.recalibrate()

  # ------------------------------------------------------------------ scoring

  def templates(self) -> np.ndarray:
    """(P, D) L2-normalised mean embedding of each person."""
    sums = np.zeros((len(self.names), self.embedding_dim), np.float64)
    np.add.at(sums, self.labels, self.embeddings.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)

  def scores(self, embeddings: np.ndarray) -> np.ndarray:
    """(N, P) cosines of L2-normalised embeddings with each person's template."""
    return np.asarray(embeddings, np.float32) @ self.templates().T

  def strangers(self) -> CalibrationSet | None:
    """The calibration photos of people not enrolled."""
    if self.calibration is None:
      return None
    return self.calibration.without(set(self.names))

  def recalibrate(self) -> Threshold | None:
    """The FPIR threshold over the strangers' highest scores against the current gallery."""
    strangers = self.strangers()
    if strangers is None or not len(strangers) or not self.names:
      self.threshold = None
    else:
      top = self.scores(strangers.embeddings).max(axis=1)
      self.threshold = thresholds.threshold_at_rate(top, self.fpir, 'FPIR', strangers.source)
    return self.threshold

  def threshold_or_error(self) -> Threshold:
    if self.threshold is None:
      where = self.path or 'this gallery'
      raise CalibrationError(
        f'{where} has no calibration photos, so no "unknown" threshold: enrol with '
        '--calibrate DIR (photos of people neither trained on nor enrolled), use a training '
        'workdir with held-out people as --model, or pass --threshold T'
      )
    return self.threshold

  def name_faces(
    self, faces: Sequence[Any], embeddings: np.ndarray, threshold: Threshold
  ) -> list[Any]:
    from arcface_jax.faces.recognizer import Identification

    scores = self.scores(embeddings)
    answers = []
    for face, row in zip(faces, scores):
      order = np.argsort(-row)
      best = int(order[0])
      second = int(order[1]) if len(order) > 1 else None
      score = float(row[best])
      answers.append(
        Identification(
          face=face,
          name=self.names[best] if score > threshold.value else UNKNOWN,
          score=score,
          best_match=self.names[best],
          runner_up=None if second is None else self.names[second],
          runner_up_score=None if second is None else float(row[second]),
          threshold=threshold,
        )
      )
    return answers

  def check_model(self, info: ModelInfo, model_path: str = '') -> None:
    """GalleryError unless `info` is the model this gallery was made with."""
    if info.fingerprint != self.fingerprint or info.embedding_dim != self.embedding_dim:
      where = self.path or 'the gallery'
      raise GalleryError(
        f'{where} was made with model {self.model_name} (fingerprint {self.fingerprint}), not '
        f'with {model_path or "this model"}: {info.model_name} (fingerprint '
        f'{info.fingerprint}); embeddings of different models cannot be compared: enrol '
        'again with this model'
      )

  # ------------------------------------------------------------------ files

  def save(self, path: str | os.PathLike) -> None:
    """Writes the gallery, locally or to a URI (atomically: a crash leaves the old file)."""
    if not self.names:
      raise GalleryError('the gallery is empty: enrol someone before saving')
    path = os.fspath(path)
    calibration = self.calibration
    meta = {
      'format_version': FORMAT_VERSION,
      'names': self.names,
      'photos': self.photos,
      'model_name': self.model_name,
      'embedding_dim': self.embedding_dim,
      'fingerprint': self.fingerprint,
      'fpir': self.fpir,
      'calibration_identities': calibration.identities if calibration else None,
      'calibration_source': calibration.source if calibration else None,
    }
    empty = np.zeros((0, self.embedding_dim), np.float32)
    buffer = io.BytesIO()  # a file object: np.savez would append '.npz' to a name
    np.savez(
      buffer,
      meta=np.array(json.dumps(meta)),
      embeddings=self.embeddings.astype(np.float32),
      labels=self.labels.astype(np.int32),
      calibration=calibration.embeddings if calibration else empty,
    )
    uri_paths.write_bytes_atomic(path, buffer.getvalue())
    self.path = path

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'Gallery':
    """Reads and validates a saved gallery (local or a URI); GalleryError naming the file if it
    is damaged."""
    path = os.fspath(path)
    if not uri_paths.is_file(path):
      raise GalleryError(
        f'{path}: no such gallery file; make one with `python -m arcface_jax.faces enroll`'
      )
    try:
      source = io.BytesIO(uri_paths.read_bytes(path)) if uri_paths.is_remote(path) else path
      with np.load(source, allow_pickle=False) as data:
        arrays = {key: data[key] for key in ('meta', 'embeddings', 'labels', 'calibration')}
      meta = json.loads(str(arrays['meta']))
    except KeyError as e:
      raise GalleryError(f'{path}: not a gallery file (no {e} array)') from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
      raise GalleryError(f'{path}: not a gallery file or damaged ({e})') from None
    return cls._from_parts(path, meta, arrays)

  @classmethod
  def _from_parts(cls, path: str, meta: Any, arrays: dict[str, np.ndarray]) -> 'Gallery':
    def bad(what: str) -> GalleryError:
      return GalleryError(f'{path}: damaged gallery ({what}); enrol again')

    if not isinstance(meta, dict) or meta.get('format_version') != FORMAT_VERSION:
      raise bad(f'format_version is not {FORMAT_VERSION}')
    keys = (
      'names',
      'photos',
      'model_name',
      'embedding_dim',
      'fingerprint',
      'fpir',
      'calibration_identities',
      'calibration_source',
    )
    missing = [k for k in keys if k not in meta]
    if missing:
      raise bad(f'meta lacks {", ".join(missing)}')
    names, dim = meta['names'], meta['embedding_dim']
    embeddings, labels, calibration = (
      arrays['embeddings'],
      arrays['labels'],
      arrays['calibration'],
    )
    if not names:
      raise bad('no people')
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or embeddings.dtype != np.float32:
      raise bad(f'embeddings {embeddings.dtype} {embeddings.shape}, expected float32 (N, {dim})')
    if labels.shape != (len(embeddings),) or not np.issubdtype(labels.dtype, np.integer):
      raise bad(f'labels {labels.dtype} {labels.shape} for {len(embeddings)} embeddings')
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
      raise bad('labels outside the list of names')
    if len(meta['photos']) != len(embeddings):
      raise bad('photos and embeddings differ in number')
    if not (np.isfinite(embeddings).all() and np.isfinite(calibration).all()):
      raise bad('NaN or infinity in the embeddings')
    cal_ids = meta['calibration_identities']
    cal = None
    if cal_ids is not None:
      if calibration.ndim != 2 or calibration.shape != (len(cal_ids), dim):
        raise bad(f'calibration {calibration.shape} for {len(cal_ids)} identities')
      cal = CalibrationSet(
        calibration.astype(np.float32), list(cal_ids), str(meta['calibration_source'])
      )
    gallery = cls(
      names=list(names),
      embeddings=embeddings,
      labels=labels.astype(np.int32),
      photos=list(meta['photos']),
      model_name=str(meta['model_name']),
      embedding_dim=int(dim),
      fingerprint=str(meta['fingerprint']),
      calibration=cal,
      fpir=float(meta['fpir']),
      path=path,
    )
    gallery.recalibrate()
    return gallery
