"""`FaceRecognizer`: photos → faces (detected and aligned) → embeddings → verify / identify.

Photos go through the MTCNN detector (`faces.mtcnn`), each face is aligned onto the 5-point
template at the model's input size (`data.align.align_face`, the one implementation) and embedded
(`faces.model`). With `aligned=True` a photo is taken as one aligned crop, as training images
are; models trained on the embedded synthetic identities or digits (`ModelInfo.detect_faces`
False) take their inputs that way by default, since the detector finds no faces in them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from arcface_jax.data.align import align_face, template
from arcface_jax.data.decode import resize
from arcface_jax.faces import images as images_lib
from arcface_jax.faces import thresholds
from arcface_jax.faces.images import ImageInput, describe, load_image
from arcface_jax.faces.model import LoadedModel, load_model
from arcface_jax.faces.thresholds import CalibrationError, CalibrationSet, Threshold

if TYPE_CHECKING:
  from arcface_jax.faces.gallery import Gallery


class NoFaceError(ValueError):
  """A photo that must show a face (verify, embed) shows none; the message names it."""


@dataclasses.dataclass
class Face:
  """One face in a photo: where it is and its aligned crop (the model's input side)."""

  box: np.ndarray  # float32 (4,) [x1, y1, x2, y2] in the photo's pixels
  score: float  # detector probability (1.0 for an aligned input)
  landmarks: np.ndarray  # float32 (5, 2) (x, y): left eye, right eye, nose, mouth corners
  crop: np.ndarray = dataclasses.field(repr=False)  # uint8 (S, S, 3) RGB aligned crop

  @property
  def area(self) -> float:
    return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))

  def to_json(self) -> dict[str, Any]:
    return {
      'box': [round(float(v), 2) for v in self.box],
      'score': round(float(self.score), 5),
      'landmarks': [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
    }


@dataclasses.dataclass
class Verification:
  same: bool
  score: float  # cosine of the two faces' embeddings
  threshold: Threshold
  faces: tuple[Face, Face] = dataclasses.field(repr=False)

  def to_json(self) -> dict[str, Any]:
    result = {
      'same': self.same,
      'score': round(self.score, 5),
      'threshold': round(self.threshold.value, 5),
      'threshold_kind': self.threshold.kind,
    }
    if self.threshold.kind == 'FAR':
      result['far'] = self.threshold.rate
    return result


@dataclasses.dataclass
class Identification:
  """One face of a photo and who it is: a gallery name, or 'unknown' at or below the threshold."""

  face: Face
  name: str
  score: float  # cosine to the best-matching person
  best_match: str  # that person, even when the answer is 'unknown'
  runner_up: str | None  # the second-best person and score (None with one person enrolled)
  runner_up_score: float | None
  threshold: Threshold

  @property
  def box(self) -> np.ndarray:
    return self.face.box

  def to_json(self) -> dict[str, Any]:
    result = {
      'box': [round(float(v), 2) for v in self.face.box],
      'name': self.name,
      'score': round(self.score, 5),
      'best_match': self.best_match,
      'runner_up': self.runner_up,
      'runner_up_score': None if self.runner_up_score is None else round(self.runner_up_score, 5),
      'threshold': round(self.threshold.value, 5),
      'threshold_kind': self.threshold.kind,
    }
    if self.threshold.kind == 'FPIR':
      result['fpir'] = self.threshold.rate
    return result


def whole_image_face(rgb: np.ndarray, size: int) -> Face:
  """An aligned crop as a face covering the whole image; the crop resized to `size` if needed."""
  height, width = rgb.shape[:2]
  landmarks = template(size) * np.array([width / size, height / size])
  return Face(
    box=np.array([0, 0, width, height], np.float32),
    score=1.0,
    landmarks=landmarks.astype(np.float32),
    crop=resize(rgb, (size, size)),
  )


def find_faces(rgb: np.ndarray, detector: Any, size: int) -> list[Face]:
  """The detector's faces in an RGB photo, each aligned onto the template at `size`."""
  return [
    Face(
      box=np.asarray(d.box, np.float32),
      score=float(d.score),
      landmarks=np.asarray(d.landmarks, np.float32),
      crop=align_face(rgb, d.landmarks, size),
    )
    for d in detector.detect(rgb)
  ]


class FaceRecognizer:
  """A loaded model with its detector and calibration. Build it with `FaceRecognizer.load`."""

  def __init__(self, model: LoadedModel, *, far: float = thresholds.DEFAULT_FAR):
    self.model = model
    self.info = model.info
    self.far = far
    self._detector = None
    self._calibration: CalibrationSet | None = None
    self._calibration_loaded = False

  @classmethod
  def load(
    cls, model: str | os.PathLike, *, step: int | None = None, far: float = thresholds.DEFAULT_FAR
  ) -> 'FaceRecognizer':
    """A training workdir (its latest checkpoint, or `step`) or an exported `.jax_export`."""
    return cls(load_model(model, step), far=far)

  # ------------------------------------------------------------------ faces

  def _aligned(self, aligned: bool | None) -> bool:
    return (not self.info.detect_faces) if aligned is None else aligned

  def as_crop(self, image: ImageInput) -> Face:
    """An already aligned photo as one face (resized to the model's side if needed)."""
    return whole_image_face(load_image(image), self.info.image_size)

  def detector(self):
    if self._detector is None:
      from arcface_jax.faces.mtcnn import MTCNN  # imported on first use: it compiles the nets

      self._detector = MTCNN()
    return self._detector

  def detect(self, image: ImageInput, *, aligned: bool | None = None) -> list[Face]:
    """Every face in the photo, highest detector score first, with aligned crops; [] if none.

    `aligned=True`: the photo is one aligned crop. Default: detect, unless the model's
    `info.detect_faces` is False (it was trained on crops that are not photos of faces).
    """
    if self._aligned(aligned):
      return [self.as_crop(image)]
    return find_faces(load_image(image), self.detector(), self.info.image_size)

  def largest_face(
    self, image: ImageInput, *, aligned: bool | None = None, index: int | None = None
  ) -> Face:
    faces = self.detect(image, aligned=aligned)
    if not faces:
      raise NoFaceError(f'{describe(image, index)}: no face found')
    return max(faces, key=lambda f: f.area)

  def embed(self, images: Sequence[ImageInput | Face] | ImageInput | Face) -> np.ndarray:
    """L2-normalised float32 (N, D) embeddings of aligned crops (paths, arrays) or `Face`s.

    A photo that is not yet aligned: pass `recognizer.detect(photo)` (or `largest_face`).
    """
    if isinstance(images, (Face, str, os.PathLike)) or (
      isinstance(images, np.ndarray) and images.ndim == 3
    ):
      images = [images]
    crops = [item.crop if isinstance(item, Face) else self.as_crop(item).crop for item in images]
    size = self.info.image_size
    if not crops:
      return np.zeros((0, self.info.embedding_dim), np.float32)
    return self.model.embed_crops(np.stack(crops).reshape(-1, size, size, 3))

  # ------------------------------------------------------------------ thresholds

  @property
  def calibration(self) -> CalibrationSet | None:
    """Embeddings of the run's held-out people (computed once per checkpoint, cached), or None."""
    if not self._calibration_loaded:
      self._calibration = thresholds.heldout_calibration(self.model)
      self._calibration_loaded = True
    return self._calibration

  def calibration_from(
    self, photos: str | Sequence[ImageInput], *, aligned: bool | None = None, progress: bool = False
  ) -> CalibrationSet:
    """Photos of people neither trained on nor enrolled, embedded as a calibration set.

    A folder with one sub-folder per person (needed for verify's impostor pairs) or a list of
    photos (each taken as a different person). Every face found is used.
    """
    people = embed_people(
      self, photos, aligned=aligned, every_face=True, progress=progress, what='calibration'
    )
    if not len(people.embeddings):
      raise CalibrationError(f'no faces found in the calibration photos {people.source}')
    return people.as_calibration()

  def calibrate(
    self, photos: str | Sequence[ImageInput], *, aligned: bool | None = None, progress: bool = False
  ) -> CalibrationSet:
    """Uses `calibration_from(photos)` for verify's threshold instead of the held-out people."""
    self._calibration = self.calibration_from(photos, aligned=aligned, progress=progress)
    self._calibration_loaded = True
    return self._calibration

  def verify_threshold(self) -> Threshold:
    calibration = self.calibration
    if calibration is None:
      raise CalibrationError(
        f'{self.model.path} has no calibration (an exported model without a kept '
        'calibration, or a run without held-out identities); pass --threshold T or --calibrate '
        'DIR (photos of people the model was not trained on), or keep such photos with the '
        f'model: python -m arcface_jax.faces calibrate --model {self.model.path} --photos DIR'
      )
    return calibration.far_threshold(self.far)

  # ------------------------------------------------------------------ answers

  def verify(
    self,
    a: ImageInput,
    b: ImageInput,
    *,
    aligned: bool | None = None,
    threshold: float | None = None,
  ) -> Verification:
    """Whether the largest faces of photos `a` and `b` are one person; NoFaceError if none."""
    face_a = self.largest_face(a, aligned=aligned, index=0)
    face_b = self.largest_face(b, aligned=aligned, index=1)
    ea, eb = self.embed([face_a, face_b])
    score = float(np.dot(ea, eb))
    used = thresholds.given(threshold) if threshold is not None else self.verify_threshold()
    return Verification(
      same=score > used.value, score=score, threshold=used, faces=(face_a, face_b)
    )

  def identify(
    self,
    image: ImageInput,
    gallery: 'Gallery',
    *,
    aligned: bool | None = None,
    threshold: float | None = None,
  ) -> list[Identification]:
    """Every face in the photo named from `gallery`, or 'unknown'; [] if no face."""
    gallery.check_model(self.info, self.model.path)
    faces = self.detect(image, aligned=aligned)
    if not faces:
      return []
    used = thresholds.given(threshold) if threshold is not None else gallery.threshold_or_error()
    return gallery.name_faces(faces, self.embed(faces), used)


@dataclasses.dataclass
class EmbeddedPeople:
  """Embeddings of people's photos, one row per face used."""

  embeddings: np.ndarray  # (N, D) float32, L2-normalised
  identities: list[str]  # the person of each row
  origins: list[str]  # the photo of each row
  boxes: list[np.ndarray]  # the face's box in that photo
  skipped: list[tuple[str, str]]  # (photo, reason) of photos that gave nothing
  source: str

  def as_calibration(self) -> CalibrationSet:
    return CalibrationSet(self.embeddings, self.identities, self.source)


def embed_people(
  recognizer: FaceRecognizer,
  people: Any,
  *,
  aligned: bool | None,
  every_face: bool,
  progress: bool,
  what: str,
) -> EmbeddedPeople:
  """Embeds people's photos: a folder (one sub-folder per person, read recursively), a mapping
  name → photos, or a flat list (each photo its own person). Photos that cannot be read or show
  no face are skipped and listed; of each photo the largest face is used, or every face."""
  from tqdm import tqdm

  if isinstance(people, (str, os.PathLike)):
    root = os.fspath(people)
    if not os.path.isdir(root):
      raise images_lib.ImageError(f'{root}: no such folder (expected one sub-folder per person)')
    listing = images_lib.list_photos([root])
    entries = [
      (path, relative.split(os.sep)[0] if relative else os.path.splitext(os.path.basename(path))[0])
      for path, relative in listing.photos
    ]
    source = root
  elif isinstance(people, dict):
    entries = [(photo, str(name)) for name, photos in people.items() for photo in photos]
    source = 'the given photos'
  else:
    entries = [(photo, describe(photo, i)) for i, photo in enumerate(people)]
    source = 'the given photos'
  crops, identities, skipped, origins, boxes = [], [], [], [], []
  for index, (photo, identity) in enumerate(
    tqdm(entries, desc=f'embedding {what} photos', unit='photo', disable=not progress)
  ):
    try:
      faces = recognizer.detect(photo, aligned=aligned)
    except images_lib.ImageError as e:
      skipped.append((describe(photo, index), str(e).removeprefix(f'{describe(photo, index)}: ')))
      continue
    if not faces:
      skipped.append((describe(photo, index), 'no face found'))
      continue
    if not every_face:
      faces = [max(faces, key=lambda f: f.area)]
    crops += [face.crop for face in faces]  # embedded together below: full batches
    boxes += [face.box for face in faces]
    identities += [identity] * len(faces)
    origins += [describe(photo, index)] * len(faces)
  return EmbeddedPeople(recognizer.embed(crops), identities, origins, boxes, skipped, source)
