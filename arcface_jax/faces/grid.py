"""`faces grid`: a model's predictions on test photos as a 3×3 figure, beside its accuracy.

The photos are a folder with one sub-folder per person (the folder name is the true name). Each
photo's largest face is named either from a gallery (open set: a name or "unknown" at the
gallery's calibrated threshold) or, without one, leave-one-out from the folder itself (closed
set: the nearest person template built from every other photo of the folder). The accuracy in the
title is over every usable photo of the folder; nine photos, as many people as possible, are
shown with their true and predicted names, wrong predictions in red.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from arcface_jax.faces.gallery import UNKNOWN, Gallery, GalleryError
from arcface_jax.faces.images import load_image
from arcface_jax.faces.recognizer import embed_people

WRONG_COLOUR, RIGHT_COLOUR = 'red', 'black'  # of each photo's title


@dataclasses.dataclass(frozen=True)
class ShownPhoto:
  """One of the nine photos in the figure."""

  photo: str
  true_name: str
  predicted: str
  score: float

  @property
  def wrong(self) -> bool:
    return self.predicted != self.true_name


@dataclasses.dataclass
class GridResult:
  correct: int
  total: int
  people: int
  protocol: str
  shown: list[ShownPhoto] = dataclasses.field(default_factory=list)  # in reading order

  @property
  def accuracy(self) -> float:
    return self.correct / self.total

  def describe(self) -> str:
    return (
      f'{self.protocol} accuracy {100 * self.accuracy:.1f}% ({self.correct}/{self.total} '
      f'photos of {self.people} people)'
    )


def _leave_one_out(embeddings: np.ndarray, identities: list[str]) -> tuple[list[str], list[float]]:
  """Each row named by the nearest person template built without that row."""
  names = sorted(set(identities))
  labels = np.array([names.index(i) for i in identities])
  sums = np.zeros((len(names), embeddings.shape[1]), np.float64)
  np.add.at(sums, labels, embeddings)
  predictions, scores = [], []
  for row, label in zip(embeddings, labels):
    templates = sums.copy()
    templates[label] -= row
    norms = np.linalg.norm(templates, axis=1)
    cosines = np.where(norms > 1e-9, templates @ row / np.maximum(norms, 1e-12), -np.inf)
    best = int(np.argmax(cosines))
    predictions.append(names[best])
    scores.append(float(cosines[best]))
  return predictions, scores


def _pick_nine(identities: list[str], seed: int) -> list[int]:
  """Nine rows, round robin over people in a seeded order, so the figure shows many people."""
  rng = np.random.default_rng(seed)
  by_person: dict[str, list[int]] = {}
  for index, identity in enumerate(identities):
    by_person.setdefault(identity, []).append(index)
  queues = [list(rng.permutation(rows)) for _, rows in sorted(by_person.items())]
  queues = [queues[i] for i in rng.permutation(len(queues))]
  chosen: list[int] = []
  while len(chosen) < min(9, len(identities)):
    for queue in queues:
      if queue and len(chosen) < 9:
        chosen.append(int(queue.pop()))
  return chosen


def write_grid(
  recognizer: Any,
  photos: str,
  out: str,
  *,
  gallery: Gallery | None = None,
  aligned: bool | None = None,
  seed: int = 0,
) -> GridResult:
  """Writes the figure to `out`; returns the accuracy over every usable photo of `photos`."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  people = embed_people(
    recognizer, photos, aligned=aligned, every_face=False, progress=True, what='test'
  )
  if not len(people.embeddings):
    raise GalleryError(f'no usable face in {photos} ({len(people.skipped)} photos skipped)')
  if gallery is None:
    if len(set(people.identities)) < 2:
      raise GalleryError(
        f'{photos}: leave-one-out needs photos of at least two people (or pass --gallery)'
      )
    predicted, scores = _leave_one_out(people.embeddings, people.identities)
    protocol = 'leave-one-out (closed set)'
  else:
    gallery.check_model(recognizer.info, recognizer.model.path)
    threshold = gallery.threshold_or_error()
    matrix = gallery.scores(people.embeddings)
    best = matrix.argmax(axis=1)
    scores = [float(matrix[i, b]) for i, b in enumerate(best)]
    predicted = [gallery.names[b] if s > threshold.value else UNKNOWN for b, s in zip(best, scores)]
    protocol = f'gallery {gallery.path or "(in memory)"} ({threshold.kind} {threshold.rate or threshold.value:g})'
  correct = sum(p == t for p, t in zip(predicted, people.identities))
  result = GridResult(correct, len(predicted), len(set(people.identities)), protocol)

  figure, axes = plt.subplots(3, 3, figsize=(9, 10.5))
  chosen = _pick_nine(people.identities, seed)
  for axis in axes.ravel():
    axis.axis('off')
  for axis, row in zip(axes.ravel(), chosen):
    shown = ShownPhoto(people.origins[row], people.identities[row], predicted[row], scores[row])
    result.shown.append(shown)
    axis.imshow(load_image(shown.photo))
    x1, y1, x2, y2 = people.boxes[row]
    axis.add_patch(
      plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.5, edgecolor='lime')
    )
    axis.set_title(
      f'true: {shown.true_name}\npredicted: {shown.predicted} ({shown.score:.2f})',
      color=WRONG_COLOUR if shown.wrong else RIGHT_COLOUR,
      fontsize=10,
    )
  figure.suptitle(f'{recognizer.model.describe()}\n{result.describe()}', fontsize=10)
  figure.tight_layout(h_pad=1.5)
  figure.savefig(out, dpi=100)
  plt.close(figure)
  return result
