"""Alignment puts known landmarks on the template; the command aligns a folder in RGB."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface_jax.data import align
from arcface_jax.data.errors import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _similarity(angle_deg, scale, shift):
  a = np.radians(angle_deg)
  return np.array(
    [
      [scale * np.cos(a), -scale * np.sin(a), shift[0]],
      [scale * np.sin(a), scale * np.cos(a), shift[1]],
    ]
  )


def _face(truth, side=320, sigma=3.0):
  """An RGB image with a red Gaussian dot on each template landmark moved by `truth`."""
  landmarks = align.transform_points(truth, align.TEMPLATE_112)
  yy, xx = np.mgrid[0:side, 0:side]
  red = np.zeros((side, side))
  for x, y in landmarks:
    red = np.maximum(red, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
  image = np.zeros((side, side, 3), np.uint8)
  image[..., 0] = np.round(255 * red).astype(np.uint8)
  return image, landmarks


def _dot_centres(channel, expected, radius=6):
  """Intensity centroid of the dot near each expected point."""
  weights = channel.astype(np.float64)
  ys, xs = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
  centres = []
  for x, y in expected:
    window = weights * ((np.abs(xs - x) <= radius) & (np.abs(ys - y) <= radius))
    centres.append([(xs * window).sum() / window.sum(), (ys * window).sum() / window.sum()])
  return np.array(centres)


def test_transform_recovers_a_known_similarity():
  truth = _similarity(17.0, 1.8, (40.0, -12.0))
  src = align.TEMPLATE_112
  dst = align.transform_points(truth, src)
  np.testing.assert_allclose(align.similarity_transform(src, dst), truth, atol=1e-9)
  # ...and the inverse direction, as align_face uses it: landmarks land on the template.
  back = align.similarity_transform(dst, src)
  assert np.abs(align.transform_points(back, dst) - src).max() < 1e-6


def test_transform_is_the_least_squares_similarity_without_reflection():
  rng = np.random.default_rng(0)
  src = align.TEMPLATE_112 + rng.normal(0, 3, (5, 2))
  dst = align.transform_points(_similarity(-30, 0.7, (5, 9)), src) + rng.normal(0, 2, (5, 2))
  # A similarity x' = a x − b y + tx, y' = b x + a y + ty is linear in (a, b, tx, ty).
  rows = np.concatenate(
    [
      np.stack([src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)], 1),
      np.stack([src[:, 1], src[:, 0], np.zeros(5), np.ones(5)], 1),
    ]
  )
  a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
  np.testing.assert_allclose(
    align.similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9
  )
  mirrored = src * [-1, 1]  # the best fit would be a reflection; a rotation is returned instead
  assert np.linalg.det(align.similarity_transform(src, mirrored)[:, :2]) > 0


@pytest.mark.parametrize('size', [112, 224])
def test_rendered_landmarks_land_on_the_template_within_half_a_pixel(size):
  image, landmarks = _face(_similarity(-12.0, 2.2, (30.0, 25.0)))
  aligned = align.align_face(image, landmarks, size=size)
  assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
  assert aligned[..., 1:].max() == 0 and aligned[..., 0].max() > 200  # channels untouched
  expected = align.template(size)
  assert np.abs(_dot_centres(aligned[..., 0], expected) - expected).max() < 0.5


def test_bad_points_are_refused():
  with pytest.raises(ValueError, match='point arrays'):
    align.similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match='coincide'):
    align.align_face(np.zeros((50, 50, 3), np.uint8), np.ones((5, 2)))
  with pytest.raises(ValueError, match='5 \\(x, y\\) landmarks'):
    align.align_face(np.zeros((50, 50, 3), np.uint8), np.ones((4, 2)))


def test_landmark_files_are_autodetected_and_bad_lines_named(tmp_path):
  points = np.arange(10, dtype=float).reshape(5, 2) + 0.5
  flat = ' '.join(f'{v:g}' for v in points.ravel())
  (tmp_path / 'a.txt').write_text(f'person one/img 1.jpg {flat}\n\nb.jpg {flat}\n')
  entries = align.read_landmarks(str(tmp_path / 'a.txt'))
  assert [name for name, _ in entries] == ['person one/img 1.jpg', 'b.jpg']
  np.testing.assert_array_equal(entries[0][1], points)
  (tmp_path / 'a.csv').write_text(
    f'path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\nc.png,{flat.replace(" ", ",")}\n'
  )
  [(name, read)] = align.read_landmarks(str(tmp_path / 'a.csv'))
  assert name == 'c.png'
  np.testing.assert_array_equal(read, points)
  (tmp_path / 'bad.txt').write_text(f'b.jpg {flat}\nc.jpg 1 2 3\n')
  with pytest.raises(DatasetError, match='bad.txt:2'):
    align.read_landmarks(str(tmp_path / 'bad.txt'))
  with pytest.raises(DatasetError, match='cannot be read'):
    align.read_landmarks(str(tmp_path / 'missing.txt'))


def test_align_command_end_to_end_keeps_rgb(tmp_path):
  truth = _similarity(8.0, 1.5, (20.0, 10.0))
  image, landmarks = _face(truth, side=240)
  (tmp_path / 'in' / 'p1').mkdir(parents=True)
  cv2.imwrite(str(tmp_path / 'in' / 'p1' / 'face.png'), image[..., ::-1])  # RGB → BGR on disk
  coords = ','.join(f'{v:.6f}' for v in landmarks.ravel())
  (tmp_path / 'lm.csv').write_text(f'p1/face.png,{coords}\np1/missing.png,{coords}\n')
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'arcface_jax.data.align',
      '--images',
      str(tmp_path / 'in'),
      '--landmarks',
      str(tmp_path / 'lm.csv'),
      '--out',
      str(tmp_path / 'out'),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert 'aligned 1 images' in result.stdout and '1 skipped' in result.stdout
  out = cv2.cvtColor(cv2.imread(str(tmp_path / 'out' / 'p1' / 'face.png')), cv2.COLOR_BGR2RGB)
  assert out[..., 1:].max() == 0 and out[..., 0].max() > 200  # still red, not blue
  expected = align.TEMPLATE_112
  assert np.abs(_dot_centres(out[..., 0], expected) - expected).max() < 0.5
