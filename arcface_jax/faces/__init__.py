"""Using a trained model on photos: detect and align faces, embed them, enrol, identify, verify.

Python API (images are file paths or (H, W, 3) uint8 RGB arrays):

    from arcface_jax.faces import FaceRecognizer, Gallery

    recognizer = FaceRecognizer.load('runs/mine')   # a training workdir or a .jax_export file
    recognizer.info                                 # ModelInfo: model, input size, fingerprint
    faces = recognizer.detect('party.jpg')          # [Face(box, score, landmarks, crop)]
    vectors = recognizer.embed(faces)               # (N, D) float32, L2-normalised
    answer = recognizer.verify('a.jpg', 'b.jpg')    # .same, .score, .threshold (a Threshold)
    gallery = Gallery.enroll(recognizer, 'my_faces/')   # one sub-folder per person
    gallery.save('people.gallery')
    gallery = Gallery.load('people.gallery')
    for who in recognizer.identify('party.jpg', gallery):
      print(who.box, who.name, who.score, who.runner_up, who.threshold.describe())

- `FaceRecognizer.load(M)`: `.info`; `.detect(image)` → faces, highest detector score first,
  each with its aligned crop at the model's input size ([] when there is none);
  `.embed(crops or faces)`; `.verify(a, b)` → `Verification(same, score, threshold, faces)` for
  the largest face of each photo; `.identify(image, gallery)` → one `Identification` per face:
  `box`, `name` (or "unknown"), `score`, `runner_up`, `runner_up_score`, `threshold`;
  `.calibrate(DIR)` uses your own photos of strangers for verify's threshold.
- `Gallery.enroll(recognizer, people, calibrate=None)` (a folder or {name: photos}), `.add(...)`
  to enrol more, `.save(path)`, `Gallery.load(path)`; `.names`, `.embeddings`, `.fingerprint`
  (the model's; a gallery is refused by another model), `.threshold`.
- Every method takes `aligned=True` when the photos are already aligned crops (no detection).

Thresholds are calibrated, never guessed (`faces.thresholds`): verify at a FAR of 1e-3 over
impostor pairs of people the model did not train on (the run's held-out identities, cached in the
workdir), identify at an FPIR of 1e-2 over strangers' highest scores against the gallery (so it
rises as the gallery grows). Every answer carries its `Threshold`: value, FAR or FPIR, the rate
measured, the number of calibration scores and where they came from.

Command line: `python -m arcface_jax.faces {detect,enroll,identify,verify,grid} --help`.
"""

from arcface_jax.faces.gallery import Gallery, GalleryError
from arcface_jax.faces.images import ImageError, load_image
from arcface_jax.faces.model import ModelError
from arcface_jax.faces.recognizer import (
  Face,
  FaceRecognizer,
  Identification,
  NoFaceError,
  Verification,
)
from arcface_jax.faces.thresholds import CalibrationError, CalibrationSet, Threshold

__all__ = [
  'CalibrationError',
  'CalibrationSet',
  'Face',
  'FaceRecognizer',
  'Gallery',
  'GalleryError',
  'Identification',
  'ImageError',
  'ModelError',
  'NoFaceError',
  'Threshold',
  'Verification',
  'load_image',
]
