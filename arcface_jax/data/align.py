"""Face alignment: the 5-landmark similarity transform onto the 112×112 template (REFERENCE §5).

Landmarks are (x, y) pixel coordinates of the left eye, right eye, nose tip, left and right mouth
corners. Images are RGB throughout; OpenCV's warpAffine does not care about channel order.
"""
from __future__ import annotations

import cv2
import numpy as np

TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 2×3 least-squares similarity (rotation, uniform scale, shift; no reflection) src → dst.

  Umeyama's closed form: the rotation from the SVD of the cross-covariance, with the sign of the
  last singular direction flipped when it would otherwise reflect.
  """
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f'expected two (N>=2, 2) point arrays, got {src.shape} and {dst.shape}')
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  covariance = dst_c.T @ src_c / len(src)
  u, singular, vt = np.linalg.svd(covariance)
  sign = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[-1] = -1
  rotation = u @ np.diag(sign) @ vt
  variance = (src_c ** 2).sum() / len(src)
  scale = (singular * sign).sum() / variance
  shift = dst_mean - scale * rotation @ src_mean
  return np.hstack([scale * rotation, shift[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
  """The `size`×`size` crop whose 5 landmarks sit on the template (scaled from 112)."""
  landmarks = np.asarray(landmarks, np.float64).reshape(5, 2)
  matrix = similarity_transform(landmarks, TEMPLATE_112 * (size / 112.0))
  return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size),
                        flags=cv2.INTER_LINEAR, borderValue=0)
