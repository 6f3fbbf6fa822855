"""Face alignment: the 5-landmark similarity transform onto the 112×112 template (REFERENCE §5).

Landmarks are (x, y) pixel coordinates of the left eye, right eye, nose tip, left and right mouth
corners (left/right as seen in the image). Images are RGB throughout; BGR appears only where
OpenCV reads and writes files (warpAffine does not care about channel order).

  python -m arcface_jax.data.align --images DIR --landmarks FILE --out DIR [--size 112]

aligns every image listed in FILE, one line per image, either CSV `path,x1,y1,...,x5,y5` (a
header line is allowed) or whitespace-separated `path x1 y1 ... x5 y5` (the layout is detected
from the first line). Paths are relative to --images; crops keep the path under --out. The
landmarks file and both folders may be local or URIs (`gs://...`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Sequence

import cv2
import numpy as np
from absl import app, logging
from absl.flags import argparse_flags
from etils import epath

from arcface_jax import paths
from arcface_jax.data.errors import DatasetError

TEMPLATE_112 = np.array(
  [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
  ],
  np.float64,
)
_LOGGED_EXAMPLES = 5


def template(size: int = 112) -> np.ndarray:
  """(5, 2) landmark positions in a `size`×`size` crop: the 112 template scaled by size/112."""
  return TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 2×3 least-squares similarity (rotation, uniform scale, shift; no reflection) src → dst.

  Umeyama's closed form: the rotation from the SVD of the cross-covariance, with the sign of the
  last singular direction flipped when it would otherwise reflect.
  """
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f'expected two (N>=2, 2) point arrays, got {src.shape} and {dst.shape}')
  if not (np.isfinite(src).all() and np.isfinite(dst).all()):
    raise ValueError('landmarks contain NaN or infinity')
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  variance = (src_c**2).sum() / len(src)
  if variance < 1e-12:  # all points at one place: no scale or rotation can be recovered
    raise ValueError('source landmarks coincide; cannot estimate a similarity transform')
  covariance = dst_c.T @ src_c / len(src)
  u, singular, vt = np.linalg.svd(covariance)
  sign = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[-1] = -1
  rotation = u @ np.diag(sign) @ vt
  scale = (singular * sign).sum() / variance
  shift = dst_mean - scale * rotation @ src_mean
  return np.hstack([scale * rotation, shift[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Points (N, 2) mapped by a 2×3 affine matrix."""
  points = np.asarray(points, np.float64)
  return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
  """The `size`×`size` crop (same dtype and channels as `image`) with the landmarks on the
  template; pixels from outside the image are black."""
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f'expected an (H, W) or (H, W, C) image, got shape {image.shape}')
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.size != 10:
    raise ValueError(f'expected 5 (x, y) landmarks, got shape {landmarks.shape}')
  matrix = similarity_transform(landmarks.reshape(5, 2), template(size))
  return cv2.warpAffine(
    np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0
  )


def read_landmarks(path: paths.PathLike) -> list[tuple[str, np.ndarray]]:
  """[(image path as written, (5, 2) landmarks)] from a CSV or whitespace landmarks file."""
  try:
    text = paths.read_text(path)
  except OSError as e:
    raise DatasetError(f'landmarks file {path} cannot be read ({e.strerror or e})') from None
  lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
  lines = [(n, line) for n, line in lines if line and not line.startswith('#')]
  if not lines:
    raise DatasetError(f'landmarks file {path} is empty')
  is_csv = ',' in lines[0][1]
  entries = []
  for position, (number, line) in enumerate(lines):
    # Whitespace layout: the last ten fields are numbers, so a path may contain spaces.
    fields = next(csv.reader([line])) if is_csv else line.rsplit(None, 10)
    fields = [x.strip() for x in fields]
    try:
      if len(fields) < 11:
        raise ValueError
      points = np.array([float(x) for x in fields[1:11]], np.float64).reshape(5, 2)
    except ValueError:
      if position == 0:
        continue  # a header line such as `path,x1,y1,...`
      layout = 'path,x1,y1,...,x5,y5' if is_csv else 'path x1 y1 ... x5 y5'
      raise DatasetError(f'{path}:{number}: expected "{layout}", got {line[:80]!r}') from None
    entries.append((fields[0], points))
  if not entries:
    raise DatasetError(f'landmarks file {path} has no landmark lines')
  return entries


def _read_bgr(path: str) -> np.ndarray | None:
  """BGR uint8, or None when missing or undecodable: `cv2.imread` locally, bytes for a URI."""
  if not paths.is_remote(path):
    return cv2.imread(path, cv2.IMREAD_COLOR)
  try:
    data = np.frombuffer(paths.read_bytes(path), np.uint8)
  except FileNotFoundError:
    return None
  return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def _write_bgr(path: str, bgr: np.ndarray) -> bool:
  """`cv2.imwrite` locally; for a URI encoded by its extension and written whole."""
  if not paths.is_remote(path):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    return bool(cv2.imwrite(path, bgr))
  ok, encoded = cv2.imencode(os.path.splitext(path)[1], bgr)
  if ok:
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_bytes(encoded.tobytes())
  return bool(ok)


def align_folder(
  images_dir: paths.PathLike,
  landmarks_file: paths.PathLike,
  out_dir: paths.PathLike,
  size: int = 112,
) -> tuple[int, list[str]]:
  """Aligns every listed image into out_dir (same relative path); (written, failed paths)."""
  images_dir, out_dir = os.fspath(images_dir), os.fspath(out_dir)
  written = 0
  failed: list[str] = []
  for name, points in read_landmarks(landmarks_file):
    given = os.path.isabs(name) or paths.is_remote(name)
    source = name if given else paths.join(images_dir, name)
    # String arithmetic, the same for a local path and a URI.
    relative = os.path.relpath(source, images_dir)
    if relative.startswith(os.pardir):  # an absolute path elsewhere: keep just its file name
      relative = os.path.basename(source)
    bgr = _read_bgr(source)
    try:
      if bgr is None:
        raise ValueError('missing or not a decodable image')
      rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # align in RGB, as everything downstream
      aligned = align_face(rgb, points, size)
      target = paths.join(out_dir, relative)
      if not _write_bgr(target, cv2.cvtColor(aligned, cv2.COLOR_RGB2BGR)):
        raise ValueError(f'cannot write {target}')
    except (ValueError, cv2.error) as e:  # cv2.error: e.g. an extension OpenCV cannot write
      if len(failed) < _LOGGED_EXAMPLES:
        logging.warning('skipping %s: %s', source, e)
      failed.append(source)
      continue
    written += 1
  if failed:
    logging.warning(
      '%d of %d images could not be aligned (e.g. %s)',
      len(failed),
      written + len(failed),
      failed[:_LOGGED_EXAMPLES],
    )
  return written, failed


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse_flags.ArgumentParser(
    prog='python -m arcface_jax.data.align',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--images', required=True, help='folder the listed paths are relative to')
  parser.add_argument(
    '--landmarks', required=True, help='CSV "path,x1,y1,...,x5,y5" or text "path x1 y1 ... x5 y5"'
  )
  parser.add_argument('--out', required=True, help='output folder for the aligned crops')
  parser.add_argument('--size', type=int, default=112, help='crop side in pixels')
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  try:
    written, failed = align_folder(args.images, args.landmarks, args.out, args.size)
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(
    f'aligned {written} images into {args.out}' + (f' ({len(failed)} skipped)' if failed else '')
  )


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
