"""facenet-pytorch 2.6.0's MTCNN as the reference the JAX detector is compared with (tests only).

facenet-pytorch is installed with --no-deps (the compare extra's Makefile line): its
torchvision dependency would pull a CUDA torch, and it only needs `torchvision.ops.boxes.
batched_nms` and `torchvision.transforms.functional` at import. `load()` puts small stand-ins
for those two into sys.modules before importing it: a greedy NMS written here from torchvision's
documented rule (sort by score, descending; drop boxes whose IoU with a kept one is > threshold;
areas (x2 - x1)·(y2 - y1)), and an empty `functional` (only used for cropping, not detection).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest


def _torch_nms(boxes, scores, iou_threshold: float):
  import torch  # pylint: disable=import-outside-toplevel

  order = torch.sort(scores, descending=True, stable=True).indices.numpy()
  b = boxes.detach().cpu().double().numpy()  # float64 here: independent of the code under test
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  keep = []
  while order.size:
    i, order = order[0], order[1:]
    keep.append(i)
    inter = np.clip(
      np.minimum(b[i, 2], b[order, 2]) - np.maximum(b[i, 0], b[order, 0]), 0, None
    ) * np.clip(np.minimum(b[i, 3], b[order, 3]) - np.maximum(b[i, 1], b[order, 1]), 0, None)
    union = area[i] + area[order] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    order = order[iou <= iou_threshold]
  return torch.as_tensor(np.asarray(keep, np.int64))


def _batched_nms(boxes, scores, idxs, iou_threshold: float):
  import torch  # pylint: disable=import-outside-toplevel

  keep = []
  for group in torch.unique(idxs).tolist():
    members = torch.nonzero(idxs == group).flatten()
    keep.append(members[_torch_nms(boxes[members], scores[members], iou_threshold)])
  if not keep:
    return torch.zeros(0, dtype=torch.int64)
  kept = torch.cat(keep)
  return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def _module(name: str, **attributes: object) -> types.ModuleType:
  module = types.ModuleType(name)
  vars(module).update(attributes)
  return module


def _install_torchvision_stand_in() -> None:
  if 'torchvision' in sys.modules:
    return
  boxes = _module('torchvision.ops.boxes', batched_nms=_batched_nms)
  ops = _module('torchvision.ops', boxes=boxes)
  functional = _module('torchvision.transforms.functional')
  transforms = _module('torchvision.transforms', functional=functional)
  root = _module('torchvision', ops=ops, transforms=transforms)
  sys.modules.update(
    {
      'torchvision': root,
      'torchvision.ops': ops,
      'torchvision.ops.boxes': boxes,
      'torchvision.transforms': transforms,
      'torchvision.transforms.functional': functional,
    }
  )


def load():
  """The facenet_pytorch module, or a pytest skip saying how to install it."""
  pytest.importorskip('torch', reason='the compare extra (torch) is not installed')
  _install_torchvision_stand_in()
  return pytest.importorskip(
    'facenet_pytorch',
    reason="facenet-pytorch is not installed: pip install --no-deps 'facenet-pytorch==2.6.0'",
  )


class ReferenceMTCNN:
  """facenet-pytorch's detector with the same options; detect() -> (boxes (N, 4), scores (N,),
  landmarks (N, 5, 2)) as float32 numpy arrays, highest score first."""

  def __init__(
    self, min_face_size: float = 20, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709
  ):
    facenet_pytorch = load()
    self.model = facenet_pytorch.MTCNN(
      min_face_size=min_face_size,
      thresholds=list(thresholds),
      factor=scale_factor,
      keep_all=True,
      device='cpu',
      select_largest=False,
    )

  def detect(self, image: np.ndarray):
    boxes, scores, points = self.model.detect(image, landmarks=True)
    if boxes is None:
      return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    scores = np.asarray(scores, np.float32)
    order = np.argsort(-scores, kind='stable')
    return (
      np.asarray(boxes, np.float32)[order],
      scores[order],
      np.asarray(points, np.float32)[order],
    )
