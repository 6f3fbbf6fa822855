"""What the demo page does, without the page: models picked by name, a gallery file per model,
and identify / verify / enrol / list on uploaded photos.

Every bad input is a `PageProblem` whose message says what is wrong and what to do; the page
shows it as is and keeps serving. Messages name an upload by the file name the user chose, not
by the temporary path Gradio stored it under. The Gradio layout (`app.page`) only turns these
results into widgets, so everything here is tested without a browser.

Galleries: with `--gallery G` every model shares the file G, and only the model it was made
with may use it (another model's embeddings cannot be compared with it); without it each model
keeps its own gallery beside it (`<workdir>/people.gallery`, `<export>.gallery`). The file is
read again on every request, so what the page shows is what is on disk, after a reload too.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from typing import Sequence

import numpy as np
from PIL import Image

from arcface_jax.faces import (
  CalibrationError,
  FaceRecognizer,
  Gallery,
  GalleryError,
  Identification,
  ImageError,
  ModelError,
  NoFaceError,
  Threshold,
  Verification,
  load_image,
)

# Larger photos are refused before decoding: 60 megapixels is 180 MB of RGB pixels, beyond any
# camera photo, and keeps one upload from stalling the page for everyone else.
MAX_MEGAPIXELS = 60
GALLERY_NAME = 'people.gallery'
UNKNOWN = 'unknown'


class PageProblem(ValueError):
  """Bad input from the page; the message is shown on it as is."""


def _shown(text: str, paths: Sequence[str]) -> str:
  """`text` with each upload's temporary path replaced by the file name the user gave it."""
  for path in sorted(paths, key=len, reverse=True):
    text = text.replace(path, os.path.basename(path))
  return text


def check_photo(path: str | None, what: str = 'a photo') -> str:
  """The upload's path, or a PageProblem for a missing or oversized upload (header only)."""
  if not path:
    raise PageProblem(f'No photo given: upload {what} first.')
  name = os.path.basename(path)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as header:
        width, height = header.size
  except Image.DecompressionBombError:
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None  # Pillow raises this error only when a limit is set
    raise PageProblem(
      f'{name} is too large (over {limit * 2 / 1e6:.0f} '
      f'megapixels); this page takes photos up to {MAX_MEGAPIXELS} '
      'megapixels: downscale it and upload it again.'
    ) from None
  except Exception:  # not an image, truncated...: read_photo's decoder says which
    return path
  if width * height > MAX_MEGAPIXELS * 1e6:
    raise PageProblem(
      f'{name} is {width}×{height} pixels ({width * height / 1e6:.0f} '
      f'megapixels); this page takes photos up to {MAX_MEGAPIXELS} megapixels: '
      'downscale it and upload it again.'
    )
  return path


def read_photo(path: str | None, what: str = 'a photo') -> np.ndarray:
  """RGB uint8 pixels of an upload; PageProblem naming the file if it cannot be used."""
  path = check_photo(path, what)
  try:
    return load_image(path)
  except ImageError as e:
    raise PageProblem(
      _shown(str(e), [path]) + ': upload a JPEG, PNG, BMP, WebP, TIFF or GIF photo.'
    ) from None


@dataclasses.dataclass
class ModelEntry:
  """A model of the dropdown, loaded the first time it is used and then kept."""

  path: str
  gallery_path: str
  recognizer: FaceRecognizer | None = None


@dataclasses.dataclass
class IdentifyResult:
  photo: np.ndarray  # the uploaded photo (RGB uint8), to draw on
  answers: list[Identification]
  threshold: Threshold


@dataclasses.dataclass
class EnrolResult:
  gallery: Gallery
  name: str
  added: int  # photos of `name` enrolled now
  skipped: list[tuple[str, str]]  # (file name, why) of photos that gave no face


def gallery_beside(model_path: str) -> str:
  """The default gallery of a model: inside its workdir, or beside its exported file."""
  model_path = model_path.rstrip(os.sep)
  if os.path.isdir(model_path):
    return os.path.join(model_path, GALLERY_NAME)
  return model_path + '.gallery'


class PageService:
  """The page's models and galleries; one request at a time touches them (a lock)."""

  def __init__(self, models: Sequence[str], gallery: str | None = None):
    if not models:
      raise ValueError('PageService needs at least one model')
    self.models: dict[str, ModelEntry] = {}
    for path in models:
      self.models.setdefault(path, ModelEntry(path, gallery or gallery_beside(path)))
    self._lock = threading.RLock()

  @property
  def labels(self) -> list[str]:
    return list(self.models)

  def _entry(self, label: str | None) -> ModelEntry:
    if not label or label not in self.models:
      raise PageProblem(f'No model picked: choose one of {", ".join(self.models)} above.')
    return self.models[label]

  def gallery_path(self, label: str) -> str:
    return self._entry(label).gallery_path

  def recognizer(self, label: str) -> FaceRecognizer:
    """The model `label`, loaded (and its programs compiled) on first use."""
    entry = self._entry(label)
    with self._lock:
      if entry.recognizer is None:
        try:
          entry.recognizer = FaceRecognizer.load(entry.path)
        except (ModelError, ValueError, OSError) as e:
          raise PageProblem(f'Cannot load the model {label}: {e}') from None
      return entry.recognizer

  def gallery(self, label: str) -> Gallery | None:
    """The model's gallery as saved now; None before the first enrolment."""
    entry = self._entry(label)
    recognizer = self.recognizer(label)
    if not os.path.exists(entry.gallery_path):
      return None
    try:
      gallery = Gallery.load(entry.gallery_path)
      gallery.check_model(recognizer.info, label)
    except GalleryError as e:
      raise PageProblem(
        f'{e}. On this page: pick the model the gallery was made with, or '
        'start the page with another --gallery file for this model.'
      ) from None
    return gallery

  # ------------------------------------------------------------------ the tabs

  def identify(
    self, label: str, photo: str | None, *, aligned: bool, threshold: float | None = None
  ) -> IdentifyResult:
    """Every face of the uploaded photo named from the gallery, or 'unknown'."""
    with self._lock:
      recognizer = self.recognizer(label)
      gallery = self.gallery(label)
      if gallery is None:
        raise PageProblem(
          f'Nobody is enrolled yet ({self.gallery_path(label)} does not exist): '
          'add people in the Enrol tab first.'
        )
      pixels = read_photo(photo)
      try:
        answers = recognizer.identify(pixels, gallery, aligned=aligned, threshold=threshold)
      except CalibrationError:
        raise PageProblem(
          f'{gallery.path} has no calibration photos, so no "unknown" threshold '
          'was computed: untick "calibrated threshold" and set one with the '
          'slider.'
        ) from None
      if not answers:
        raise PageProblem(_no_face(photo, aligned))
      return IdentifyResult(pixels, answers, answers[0].threshold)

  def verify(
    self,
    label: str,
    photo_a: str | None,
    photo_b: str | None,
    *,
    aligned: bool,
    threshold: float | None = None,
  ) -> Verification:
    """Whether the largest faces of the two uploads are one person."""
    with self._lock:
      recognizer = self.recognizer(label)
      pixels_a = read_photo(photo_a, 'a first photo')
      pixels_b = read_photo(photo_b, 'a second photo')
      try:
        return recognizer.verify(pixels_a, pixels_b, aligned=aligned, threshold=threshold)
      except NoFaceError as e:
        which = photo_b if 'array[1]' in str(e) else photo_a
        raise PageProblem(_no_face(which, aligned)) from None
      except CalibrationError:
        raise PageProblem(
          f'The model {label} has no held-out people to calibrate a "same '
          'person" threshold on (an exported model has none): untick '
          '"calibrated threshold" and set one with the slider.'
        ) from None

  def enrol(
    self, label: str, name: str | None, photos: Sequence[str] | None, *, aligned: bool
  ) -> EnrolResult:
    """Adds the largest face of each photo to the gallery as `name`, and saves the gallery."""
    name = (name or '').strip()
    if not name:
      raise PageProblem('The name is empty: type the name of the person to enrol.')
    if name.lower() == UNKNOWN:
      raise PageProblem(f'"{name}" is the answer for strangers: choose another name.')
    photos = [p for p in (photos or []) if p]
    if not photos:
      raise PageProblem(f'No photos given: add one or more photos of {name}.')
    for photo in photos:
      check_photo(photo)
    with self._lock:
      recognizer = self.recognizer(label)
      gallery = self.gallery(label)
      people = {name: list(photos)}
      try:
        if gallery is None:
          gallery = Gallery.enroll(recognizer, people, aligned=aligned)
        else:
          gallery.add(recognizer, people, aligned=aligned)
      except GalleryError:  # not one usable face: say what was wrong with each photo
        reasons = '; '.join(_why_unusable(p, aligned) for p in photos)
        raise PageProblem(f'Nothing enrolled for {name}: {reasons}') from None
      skipped = [(os.path.basename(p), _shown(why, photos)) for p, why in gallery.skipped]
      path = self.gallery_path(label)
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      gallery.save(path)
      return EnrolResult(gallery, name, len(photos) - len(skipped), skipped)

  def people(self, label: str) -> tuple[Gallery | None, list[tuple[str, int]]]:
    """The gallery and (name, photos enrolled) of each person in it."""
    with self._lock:
      gallery = self.gallery(label)
    if gallery is None:
      return None, []
    counts = np.bincount(gallery.labels, minlength=len(gallery.names))
    return gallery, [(n, int(c)) for n, c in zip(gallery.names, counts)]


def _no_face(photo: str | None, aligned: bool) -> str:
  name = os.path.basename(photo or 'the photo')
  if aligned:
    return f'No face could be read from {name}.'
  return (
    f'No face found in {name}: upload a photo where a face is clearly visible (at least '
    'about 20 pixels wide), or tick "aligned input" if it is already a face crop.'
  )


def _why_unusable(photo: str, aligned: bool) -> str:
  try:
    read_photo(photo)
  except PageProblem as e:
    return str(e)
  return _no_face(photo, aligned)
