"""MTCNN face detection: boxes, scores and 5 landmarks from an RGB photo.

  from arcface_jax.faces.mtcnn import MTCNN
  faces = MTCNN().detect(image)   # (H, W, 3) uint8 RGB -> [Detection(box, score, landmarks)]

The cascade of Zhang et al. (2016): an image pyramid through the fully convolutional P-Net, NMS,
box regression and square-ing; 24×24 crops through R-Net; 48×48 crops through O-Net, which also
gives the landmarks. Networks and weights: `mtcnn_nets.py`.

It reproduces facenet-pytorch 2.6.0's `MTCNN.detect` (timesler/facenet-pytorch,
models/utils/detect_face.py) step for step, in float32 like it: pyramid scales 12/min_face_size ×
factor^k while the shorter side stays >= 12 px, level sizes int(side × scale + 1), "area"
resampling (torch's adaptive average pooling: output pixel i averages input pixels
floor(i·n/m) .. ceil((i+1)·n/m) - 1), P-Net threshold >= t0, cell boxes floor((2·cell + 1)/scale)
.. floor((2·cell + 12)/scale), NMS by IoU with areas (x2 - x1)·(y2 - y1) at 0.5 within each scale
and 0.7 across scales, regression by the unpadded width, square-ing, crops truncated to integers
and clipped to the image (not zero padded), R-Net/O-Net thresholds > t1/t2, regression by width
+ 1, landmarks relative to the box before O-Net's regression, and a final NMS at 0.7 over the
smaller box's area (+1 pixel areas). The one departure: a candidate wholly outside the image is
dropped (facenet-pytorch then pairs the remaining crops with the wrong boxes). The `mtcnn`
package's own pipeline (its resizing, rounding and NMS) is not followed; only its weight files are
used. Results are then sorted by score, highest first.

Compilation: all pyramid levels of a photo are packed onto one canvas, padded to multiples of 32
pixels, and P-Net runs once on it: first-layer outputs whose window leaves a level are masked
before the pool, so every level's outputs equal its own unpadded run (tested). R-Net and O-Net
run on batches padded to powers of two. A photo size compiles one P-Net program, shared by the
sizes that round to the same canvas; one line is logged before new programs compile.

Very large photos are first shrunk (OpenCV area resampling) so their longer side is `max_side`
(default 1600; faces smaller than min_face_size × side / max_side are then missed, max_side=None
keeps every pixel); boxes and landmarks are mapped back to the original pixels. Boxes may extend
past the image edge.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import cv2
import jax
import numpy as np

from arcface_jax.faces import compilation, mtcnn_nets

CANVAS_MULTIPLE = 32  # P-Net's canvas of pyramid levels is padded to multiples of this
PACK_LEVELS = True  # False: P-Net on each level alone at its own size (the tests' comparison)
MAX_BATCH = 512  # R-Net/O-Net crops per call; batches are padded (`_batch_bucket`) up to this
_MIN_BATCH = 4


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
  """One face. box: float32 (4,) [x1, y1, x2, y2] in image pixels; score: the face probability;
  landmarks: float32 (5, 2) rows (x, y) of the left eye, right eye, nose, left and right mouth
  corner, left/right as seen in the image."""

  box: np.ndarray
  score: float
  landmarks: np.ndarray


def pyramid_scales(
  height: int, width: int, min_face_size: float, scale_factor: float
) -> list[float]:
  """The P-Net image scales: 12/min_face_size shrunk by scale_factor until the short side < 12."""
  scale = 12.0 / min_face_size
  short_side = min(height, width) * scale
  scales = []
  while short_side >= 12:
    scales.append(scale)
    scale *= scale_factor
    short_side *= scale_factor
  return scales


def integral_image(image: np.ndarray) -> np.ndarray:
  """(H+1, W+1, C) integer sums of image[:y, :x] of a uint8 image: exact, in int32 when every
  sum fits (half the memory traffic of int64 or float64: 16 → 9 ms for 640×480), else int64."""
  fits = image.shape[0] * image.shape[1] * 255 < 2**31
  dtype = np.int32 if fits else np.int64
  table = np.zeros((image.shape[0] + 1, image.shape[1] + 1, image.shape[2]), dtype)
  np.cumsum(image, axis=0, dtype=dtype, out=table[1:, 1:])
  np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
  return table


def _windows(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
  """Adaptive-average-pooling windows [lo, hi) of `length` pixels from `start` into `out` cells."""
  i = np.arange(out)
  length = length[:, None]
  return start[:, None] + i * length // out, start[:, None] + ((i + 1) * length + out - 1) // out


def area_resize(
  table: np.ndarray,
  top: np.ndarray,
  left: np.ndarray,
  height: np.ndarray,
  width: np.ndarray,
  out_hw: tuple[int, int],
) -> np.ndarray:
  """Crops [top, top+height) × [left, left+width) resized to out_hw by area averaging.

  torch's interpolate(mode='area') (adaptive average pooling), from the integral image `table`.
  Arguments are (N,) integer arrays; returns (N, out_h, out_w, C) float32.
  """
  row_lo, row_hi = _windows(top, height, out_hw[0])
  col_lo, col_hi = _windows(left, width, out_hw[1])
  r_lo, r_hi = row_lo[:, :, None], row_hi[:, :, None]
  c_lo, c_hi = col_lo[:, None, :], col_hi[:, None, :]
  sums = table[r_hi, c_hi] - table[r_lo, c_hi] - table[r_hi, c_lo] + table[r_lo, c_lo]
  counts = ((r_hi - r_lo) * (c_hi - c_lo))[..., None]
  return (sums / counts).astype(np.float32)


def area_resize_whole(table: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """The whole image resized to out_hw by area averaging: (out_h, out_w, C) float32.

  The same windows as area_resize, separably: whole rows of the integral image, then columns.
  """
  height, width = table.shape[0] - 1, table.shape[1] - 1
  row_lo, row_hi = _windows(np.zeros(1, np.int64), np.array([height]), out_hw[0])
  col_lo, col_hi = _windows(np.zeros(1, np.int64), np.array([width]), out_hw[1])
  rows = table[row_hi[0]] - table[row_lo[0]]
  sums = rows[:, col_hi[0]] - rows[:, col_lo[0]]
  counts = ((row_hi - row_lo)[0][:, None] * (col_hi - col_lo)[0][None, :])[..., None]
  return (sums / counts).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
  """Greedy NMS by IoU (areas (x2-x1)·(y2-y1), torchvision's rule); kept indices, best first."""
  order = np.argsort(-scores, kind='stable')
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  areas = (x2 - x1) * (y2 - y1)
  suppressed = np.zeros(len(boxes), bool)
  keep = []
  for position, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    rest = order[position + 1 :]
    width = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    height = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
    inter = width * height
    with np.errstate(divide='ignore', invalid='ignore'):
      overlap = inter / (areas[i] + areas[rest] - inter)
    suppressed[rest[overlap > threshold]] = True
  return np.asarray(keep, np.int64)


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
  """Greedy NMS by intersection over the smaller box (+1 pixel areas): the cascade's last step."""
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(scores)  # ascending; the best is taken from the end
  keep = []
  while order.size:
    i, rest = order[-1], order[:-1]
    keep.append(i)
    width = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    height = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    overlap = width * height / np.minimum(areas[i], areas[rest])
    order = rest[overlap <= threshold]
  return np.asarray(keep, np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
  """Boxes (N, >=4) grown to squares of side max(w, h) about their centres (w = x2 - x1)."""
  boxes = boxes.copy()
  height, width = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
  side = np.maximum(width, height)
  boxes[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
  boxes[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
  boxes[:, 2:4] = boxes[:, :2] + side[:, None]
  return boxes


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Boxes moved by offsets (N, 4) in units of their (width + 1, height + 1)."""
  boxes = boxes.copy()
  width = boxes[:, 2] - boxes[:, 0] + 1
  height = boxes[:, 3] - boxes[:, 1] + 1
  boxes[:, :4] = boxes[:, :4] + offsets * np.stack([width, height, width, height], 1)
  return boxes


def _bucket(size: int) -> int:
  return -(-size // CANVAS_MULTIPLE) * CANVAS_MULTIPLE


def _even(size: int) -> int:
  return size + (size & 1)


def pack_levels(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
  """Places pyramid levels (h, w), largest first, on one canvas in shelves, left to right.

  The canvas is as wide as the first two levels side by side; every level starts at even
  coordinates (so P-Net's stride-2 pool sees each level's own grid). Returns each level's (top,
  left) and the canvas (height, width), both rounded up to multiples of CANVAS_MULTIPLE.
  """
  width = sum(_even(w) for _, w in sizes[:2])
  top = left = shelf = 0
  corners = []
  for level_h, level_w in sizes:
    if left and left + level_w > width:
      top, left, shelf = top + _even(shelf), 0, 0
    corners.append((top, left))
    left += _even(level_w)
    shelf = max(shelf, level_h)
  return corners, (_bucket(top + shelf), _bucket(width))


def _batch_bucket(n: int) -> int:
  """Powers of two up to 64, then multiples of 64: R-Net's ~190 crops of a 640×480 photo pad to
  192, not 256 (R-Net 55 → 43 ms a photo), for a few more small programs to compile."""
  if n <= 64:
    return max(_MIN_BATCH, 1 << (n - 1).bit_length())
  return -(-n // 64) * 64


class MTCNN:
  """The MTCNN face detector with the published weights (see the module docstring).

  min_face_size: the smallest face searched for, in pixels (after any max_side shrink).
  thresholds: the P-, R- and O-Net face probabilities a candidate needs.
  scale_factor: the ratio between successive pyramid levels.
  max_side: photos whose longer side exceeds it are shrunk to it first (None: never).
  weights_dir: a folder with pnet.lz4, rnet.lz4 and onet.lz4 (default: the installed `mtcnn`
    package's). Creating a detector turns the persistent compilation cache on (compilation.py).
  """

  def __init__(
    self,
    *,
    min_face_size: float = 20,
    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    scale_factor: float = 0.709,
    max_side: int | None = 1600,
    weights_dir: str | None = None,
  ):
    thresholds = tuple(float(t) for t in thresholds)
    if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
      raise ValueError(f'thresholds must be three probabilities (P-, R-, O-Net), got {thresholds}')
    if not min_face_size > 0:
      raise ValueError(f'min_face_size must be positive, got {min_face_size}')
    if not 0.0 < scale_factor < 1.0:
      raise ValueError(f'scale_factor must be in (0, 1), got {scale_factor}')
    if max_side is not None and max_side < 12:
      raise ValueError(f'max_side must be at least 12 pixels or None, got {max_side}')
    self.min_face_size = float(min_face_size)
    self.thresholds = thresholds
    self.scale_factor = float(scale_factor)
    self.max_side = max_side
    compilation.enable_persistent_cache()
    self._variables = {
      net: jax.device_put(mtcnn_nets.load_weights(net, weights_dir))
      for net in ('pnet', 'rnet', 'onet')
    }

  def detect(self, image: np.ndarray) -> list[Detection]:
    """Faces in an (H, W, 3) uint8 RGB image, highest score first; [] when there are none."""
    if not isinstance(image, np.ndarray):
      raise ValueError(f'expected an (H, W, 3) uint8 RGB numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(
        'expected an (H, W, 3) uint8 RGB image, got an array of shape '
        f'{image.shape} and dtype {image.dtype}'
      )
    height, width = image.shape[:2]
    shrink = 1.0
    if self.max_side is not None and max(height, width) > self.max_side:
      shrink = self.max_side / max(height, width)
      size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
      image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    boxes, points = self._cascade(image)
    if shrink != 1.0:  # back to the original pixels, per axis (the rounding differs slightly)
      to_original = np.array([width / image.shape[1], height / image.shape[0]], np.float32)
      boxes[:, :4] *= np.tile(to_original, 2)
      points *= to_original
    order = np.argsort(-boxes[:, 4], kind='stable')
    return [
      Detection(box=boxes[i, :4].copy(), score=float(boxes[i, 4]), landmarks=points[i].copy())
      for i in order
    ]

  def _cascade(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 5) [x1, y1, x2, y2, score], landmarks (N, 5, 2)), both float32."""
    no_faces = np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
    height, width = image.shape[:2]
    table = integral_image(image)
    boxes = self._propose(table, height, width)
    if not len(boxes):
      return no_faces
    boxes, crops = self._crops(table, boxes, height, width, 24)
    offsets, scores = self._run_batched('rnet', crops)
    keep = scores > self.thresholds[1]
    boxes = np.concatenate([boxes[keep, :4], scores[keep, None]], 1)
    offsets = offsets[keep]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = square(regress(boxes[pick], offsets[pick]))
    if not len(boxes):
      return no_faces
    boxes, crops = self._crops(table, boxes, height, width, 48)
    offsets, landmarks, scores = self._run_batched('onet', crops)
    keep = scores > self.thresholds[2]
    boxes = np.concatenate([boxes[keep, :4], scores[keep, None]], 1)
    offsets, landmarks = offsets[keep], landmarks[keep]
    box_w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    box_h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    points = np.stack(
      [box_w * landmarks[:, :5] + boxes[:, 0:1] - 1, box_h * landmarks[:, 5:] + boxes[:, 1:2] - 1],
      -1,
    )
    boxes = regress(boxes, offsets)
    pick = nms_min(boxes[:, :4], boxes[:, 4], 0.7)
    return boxes[pick], points[pick].astype(np.float32)

  def _propose(self, table: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stage 1: P-Net over the pyramid -> squared candidate boxes (N, 5) with P-Net scores."""
    scales = pyramid_scales(height, width, self.min_face_size, self.scale_factor)
    sizes = [(int(height * s + 1), int(width * s + 1)) for s in scales]
    if not sizes:  # smaller than one 12-pixel window at the largest scale
      return np.zeros((0, 5), np.float32)
    if PACK_LEVELS:
      origins, canvas_hw = pack_levels(sizes)
      groups = [(canvas_hw, list(zip(origins, sizes)))]
    else:  # each level alone at its own size: what the packed canvas must reproduce
      groups = [(size, [((0, 0), size)]) for size in sizes]
    new = compilation.first_seen([('mtcnn-pnet', hw) for hw, _ in groups])
    if new:
      compilation.log_compile(
        f'MTCNN: compiling P-Net for {", ".join(f"{k[1][0]}x{k[1][1]}" for k in new)} '
        'pixels (photos of other sizes that round to the same reuse it)'
      )
    results, outputs = [], []
    for (canvas_h, canvas_w), placed in groups:  # dispatch every group before reading any
      canvas = np.zeros((1, canvas_h, canvas_w, 3), np.float32)
      valid = np.zeros((1, canvas_h - 2, canvas_w - 2), bool)
      for (top, left), (level_h, level_w) in placed:
        canvas[0, top : top + level_h, left : left + level_w] = area_resize_whole(
          table, (level_h, level_w)
        )
        valid[0, top : top + level_h - 2, left : left + level_w - 2] = True
      results.append(mtcnn_nets.pnet_forward(self._variables['pnet'], canvas, valid))
      outputs += [(len(results) - 1, top // 2, left // 2) for top, left in (o for o, _ in placed)]
    results = [(np.asarray(offsets)[0], np.asarray(probs)[0]) for offsets, probs in results]
    candidates = []
    for scale, (level_h, level_w), (group, top, left) in zip(scales, sizes, outputs):
      rows, cols = math.ceil((level_h - 2) / 2) - 4, math.ceil((level_w - 2) / 2) - 4
      offsets = results[group][0][top : top + rows, left : left + cols]
      probs = results[group][1][top : top + rows, left : left + cols]
      ys, xs = np.nonzero(probs >= self.thresholds[0])
      if not len(ys):
        continue
      cells = np.stack([xs, ys], 1).astype(np.float32)
      corners = np.concatenate(
        [np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale)], 1
      )
      level_boxes = np.concatenate([corners, probs[ys, xs, None], offsets[ys, xs]], 1)
      candidates.append(level_boxes[nms(level_boxes[:, :4], level_boxes[:, 4], 0.5)])
    if not candidates:
      return np.zeros((0, 5), np.float32)
    boxes = np.concatenate(candidates)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    moved = boxes[:, :4] + boxes[:, 5:9] * np.stack([box_w, box_h, box_w, box_h], 1)
    return square(np.concatenate([moved, boxes[:, 4:5]], 1))

  def _crops(
    self, table: np.ndarray, boxes: np.ndarray, height: int, width: int, size: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes truncated to integers and clipped to the image, and their crops resized to size²."""
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    x2, y2 = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
    inside = (y2 > y1 - 1) & (x2 > x1 - 1)  # 1-based inclusive [x1, x2] is not empty
    boxes, x1, y1, x2, y2 = boxes[inside], x1[inside], y1[inside], x2[inside], y2[inside]
    crops = area_resize(table, y1 - 1, x1 - 1, y2 - y1 + 1, x2 - x1 + 1, (size, size))
    return boxes, crops

  def _run_batched(self, net: str, crops: np.ndarray) -> tuple[np.ndarray, ...]:
    """R-Net or O-Net over crops in padded batches; outputs as float32 numpy arrays."""
    forward = mtcnn_nets.rnet_forward if net == 'rnet' else mtcnn_nets.onet_forward
    chunks = [crops[i : i + MAX_BATCH] for i in range(0, len(crops), MAX_BATCH)]
    new = compilation.first_seen([(f'mtcnn-{net}', _batch_bucket(len(c))) for c in chunks])
    if new:
      compilation.log_compile(
        f'MTCNN: compiling {net[0].upper()}-Net for batch size(s) '
        f'{", ".join(str(k[1]) for k in new)}'
      )
    results = []
    for chunk in chunks:
      padded = np.zeros((_batch_bucket(len(chunk)),) + chunk.shape[1:], np.float32)
      padded[: len(chunk)] = chunk
      results.append((len(chunk), forward(self._variables[net], padded)))
    return tuple(
      np.concatenate([np.asarray(out[k][:n]) for n, out in results])
      for k in range(len(results[0][1]))
    )
