"""Alignment puts known landmarks on the template."""
import numpy as np
import pytest

from arcface_jax.data import align


def _similarity(angle_deg, scale, shift):
  a = np.radians(angle_deg)
  return np.array([[scale * np.cos(a), -scale * np.sin(a), shift[0]],
                   [scale * np.sin(a), scale * np.cos(a), shift[1]]])


def test_transform_recovers_a_known_similarity():
  truth = _similarity(17.0, 1.8, (40.0, -12.0))
  src = align.TEMPLATE_112
  dst = src @ truth[:, :2].T + truth[:, 2]
  np.testing.assert_allclose(align.similarity_transform(src, dst), truth, atol=1e-9)


def test_aligned_marker_lands_on_the_template_within_half_a_pixel():
  # A face seen rotated, scaled and shifted: its landmarks are the template moved by `truth`.
  truth = _similarity(-12.0, 2.2, (30.0, 25.0))
  landmarks = align.TEMPLATE_112 @ truth[:, :2].T + truth[:, 2]
  image = np.zeros((320, 320, 3), np.uint8)
  nose = landmarks[2]
  yy, xx = np.mgrid[0:320, 0:320]
  blob = np.exp(-((xx - nose[0]) ** 2 + (yy - nose[1]) ** 2) / (2 * 4.0 ** 2))
  image[..., 0] = np.round(255 * blob).astype(np.uint8)  # a red marker on the nose tip
  aligned = align.align_face(image, landmarks)
  assert aligned.shape == (112, 112, 3) and aligned[..., 1:].max() == 0  # channels untouched
  weights = aligned[..., 0].astype(np.float64)
  ys, xs = np.mgrid[0:112, 0:112]
  centre = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
  assert np.linalg.norm(centre - align.TEMPLATE_112[2]) < 0.5


def test_bad_points_are_refused():
  with pytest.raises(ValueError, match='point arrays'):
    align.similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
