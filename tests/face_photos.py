"""Real photos of faces with clear licences, read from installed packages (see tests/data/README).

astronaut: NASA portrait of Eileen Collins, public domain, in the scikit-image wheel.
grace_hopper: US Navy portrait of Grace Hopper, public domain, in the matplotlib wheel.
two_people: a real 640×376 photo of two people side by side (tests/data/two_people.jpg, from the
  MIT-licensed face_recognition repository; provenance in tests/data/README).
group: several of those faces at different sizes, mirrored, on one 512×512 canvas (more faces,
  more sizes and mirrored faces than any real photo with a clear licence available here).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
TWO_PEOPLE = os.path.join(DATA, 'two_people.jpg')


def astronaut() -> np.ndarray:
  import skimage.data  # pylint: disable=import-outside-toplevel

  return np.ascontiguousarray(skimage.data.astronaut())


def grace_hopper() -> np.ndarray:
  import matplotlib.cbook  # pylint: disable=import-outside-toplevel

  with open(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False), 'rb') as f:
    encoded = np.frombuffer(f.read(), np.uint8)
  bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
  assert bgr is not None, 'matplotlib sample grace_hopper.jpg does not decode'
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def two_people() -> np.ndarray:
  """Two people, each face about 90 px wide, in one real 640×376 photo."""
  bgr = cv2.imread(TWO_PEOPLE, cv2.IMREAD_COLOR)
  assert bgr is not None, f'{TWO_PEOPLE} does not decode'
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _paste(canvas: np.ndarray, photo: np.ndarray, top: int, left: int, height: int) -> None:
  width = round(photo.shape[1] * height / photo.shape[0])
  canvas[top : top + height, left : left + width] = cv2.resize(
    photo, (width, height), interpolation=cv2.INTER_AREA
  )


# Where group() pastes each photo: (top, left, height, mirrored, photo name); all 512x512 photos
# share compiled detector programs in the tests.
GROUP_LAYOUT = [
  (10, 10, 250, False, 'astronaut'),
  (5, 270, 280, True, 'grace_hopper'),
  (300, 30, 180, True, 'astronaut'),
  (300, 300, 200, False, 'grace_hopper'),
]


def group() -> np.ndarray:
  """Four faces (two people, two sizes each, two of them mirrored) on a smooth background."""
  rows = np.linspace(90, 160, 512)[:, None, None]
  cols = np.linspace(0, 50, 512)[None, :, None]
  canvas = np.broadcast_to(rows + cols + np.array([10, 20, 0]), (512, 512, 3)).astype(np.uint8)
  canvas = canvas.copy()
  for top, left, height, mirrored, name in GROUP_LAYOUT:
    photo = globals()[name]()
    _paste(canvas, photo[:, ::-1] if mirrored else photo, top, left, height)
  return canvas


def group_regions() -> list[tuple[int, int, int, int]]:
  """[x1, y1, x2, y2] of each photo pasted by group(), in GROUP_LAYOUT order."""
  sizes = {'astronaut': (512, 512), 'grace_hopper': (600, 512)}
  regions = []
  for top, left, height, _, name in GROUP_LAYOUT:
    photo_h, photo_w = sizes[name]
    regions.append((left, top, left + round(photo_w * height / photo_h), top + height))
  return regions


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two [x1, y1, x2, y2] boxes (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union
