"""The MTCNN detector side by side with facenet-pytorch 2.6.0 (the compare extra).

Weights: the `mtcnn` package's .lz4 arrays equal facenet-pytorch's .pt tensors, layer by layer.
Networks: each of P/R/O-Net with our weights against facenet-pytorch's network on the same inputs.
End to end: on real photos, the issue's criteria against the reference's faces.
"""

from __future__ import annotations

import os

import face_photos
import numpy as np
import pytest
import reference_mtcnn

from arcface_jax.faces import mtcnn_nets
from arcface_jax.faces.mtcnn import MTCNN

torch = pytest.importorskip('torch', reason='the compare extra (torch) is not installed')
facenet_pytorch = reference_mtcnn.load()

# facenet-pytorch's parameter -> ours, and how its layout maps onto ours.
_TORCH_NAMES = {
  'pnet': {'conv4_1': 'face', 'conv4_2': 'box'},
  'rnet': {'dense5_1': 'face', 'dense5_2': 'box'},
  'onet': {'dense6_1': 'face', 'dense6_2': 'box', 'dense6_3': 'landmarks'},
}


def _torch_state(net: str) -> dict:
  path = os.path.join(os.path.dirname(facenet_pytorch.__file__), 'data', f'{net}.pt')
  return {k: v.numpy() for k, v in torch.load(path).items()}


@pytest.mark.parametrize('net', ['pnet', 'rnet', 'onet'])
def test_published_weights_equal_facenet_pytorch_layer_by_layer(net):
  ours = mtcnn_nets.load_weights(net)['params']
  theirs = _torch_state(net)
  assert len(theirs) == sum(len(layer) for layer in ours.values())
  for name, array in theirs.items():
    layer, kind = name.split('.')
    layer = _TORCH_NAMES[net].get(layer, layer)
    if layer.startswith('prelu'):
      np.testing.assert_array_equal(ours[layer]['alpha'], array, err_msg=name)
    elif kind == 'bias':
      np.testing.assert_array_equal(ours[layer]['bias'], array, err_msg=name)
    elif array.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
      np.testing.assert_array_equal(ours[layer]['kernel'], array.transpose(2, 3, 1, 0), name)
    else:  # (out, in) -> (in, out)
      np.testing.assert_array_equal(ours[layer]['kernel'], array.T, err_msg=name)


def _reference_outputs(module, images: np.ndarray) -> list[np.ndarray]:
  with torch.no_grad():
    outputs = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  return [o.numpy() for o in outputs]


@pytest.mark.parametrize(
  'net,shape', [('pnet', (2, 41, 57, 3)), ('rnet', (5, 24, 24, 3)), ('onet', (5, 48, 48, 3))]
)
def test_each_network_matches_facenet_pytorch(net, shape):
  images = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
  variables = mtcnn_nets.load_weights(net)
  module = {
    'pnet': facenet_pytorch.PNet,
    'rnet': facenet_pytorch.RNet,
    'onet': facenet_pytorch.ONet,
  }[net]().eval()
  theirs = _reference_outputs(module, (images - 127.5) * 0.0078125)
  if net == 'pnet':  # theirs: (box (N, 4, h, w), probabilities (N, 2, h, w)), odd sizes: ceil pool
    valid = np.ones((shape[0], shape[1] - 2, shape[2] - 2), bool)
    box, prob = mtcnn_nets.pnet_forward(variables, images, valid)
    np.testing.assert_allclose(np.asarray(box), theirs[0].transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(prob), theirs[1][:, 1], atol=1e-5)
  elif net == 'rnet':
    box, prob = mtcnn_nets.rnet_forward(variables, images)
    np.testing.assert_allclose(np.asarray(box), theirs[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(prob), theirs[1][:, 1], atol=1e-5)
  else:
    box, landmarks, prob = mtcnn_nets.onet_forward(variables, images)
    np.testing.assert_allclose(np.asarray(box), theirs[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(landmarks), theirs[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(prob), theirs[2][:, 1], atol=1e-5)


def _photos() -> dict:
  return {
    'astronaut': face_photos.astronaut(),
    'grace_hopper': face_photos.grace_hopper()[:512],  # 512x512: programs shared
    'group': face_photos.group(),
    'two_people': face_photos.two_people(),
  }


def test_end_to_end_on_real_photos_meets_the_issue_criteria():
  """≥ 97% of the reference's faces (probability ≥ 0.95) found at IoU ≥ 0.9; landmark error
  ≤ 2% of √(w·h) of the reference box on ≥ 95% of them; no extra faces (above 0.95)."""
  ours_detector, reference = MTCNN(), reference_mtcnn.ReferenceMTCNN()
  wanted = found = landmarks_ok = extra = 0
  box_errors = []
  for name, image in _photos().items():
    faces = ours_detector.detect(image)
    boxes, scores, points = reference.detect(image)
    matched = set()
    for box, score, landmarks in zip(boxes, scores, points):
      if score < 0.95:
        continue
      wanted += 1
      overlaps = [face_photos.iou(face.box, box) for face in faces]
      best = int(np.argmax(overlaps)) if overlaps else -1
      if best < 0 or overlaps[best] < 0.9:
        continue
      found += 1
      matched.add(best)
      face = faces[best]
      scale = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
      error = np.linalg.norm(face.landmarks - landmarks, axis=1).mean() / scale
      landmarks_ok += error <= 0.02
      box_errors.append(np.abs(face.box - box).max())
      assert abs(face.score - score) < 1e-4, name
    extra += sum(face.score >= 0.95 for k, face in enumerate(faces) if k not in matched)
  assert wanted >= 8  # 1 + 1 + 4 + 2 faces
  assert found >= 0.97 * wanted
  assert landmarks_ok >= 0.95 * found
  assert extra == 0
  # Matching facenet-pytorch step for step, boxes agree to float32 rounding, not just IoU 0.9.
  assert max(box_errors) < 0.05
