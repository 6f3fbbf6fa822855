"""A tiny trained face model, its held-out photos and a gallery, for the demo page's tests.

The run is the tiny synthetic recipe (a few steps: its answers are not accurate, the tests
compare the page with the faces API rather than with the truth). It is trained once per
session under pytest's base temporary folder and reused by test_app.py and
test_app_browser.py; the generated dataset is the one test_train.py uses.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')
ENROLLED = (0, 1, 2, 3)  # held-out identities in the test gallery
PHOTOS_EACH = 3  # enrolled photos of each; the rest are unseen


def tiny_run(tmp_path_factory) -> str:
  """The workdir of a finished tiny run (trained on first call in the session)."""
  from arcface_jax import parallel, trainer
  from arcface_jax.config_files import load_config

  base = tmp_path_factory.getbasetemp()
  config = load_config(TINY)
  config.data.data_dir = str(base / 'data')  # absolute: the page reads it back for calibration
  workdir = base / 'app_tiny_run'
  if not (workdir / 'checkpoints' / str(config.train.num_steps)).exists():
    # One device, as test_faces.py trains it: the same programs, so compiled once per session.
    trainer.train_and_evaluate(config, str(workdir), mesh=parallel.make_mesh(1))
  return str(workdir)


def heldout_photos(workdir: str) -> dict[int, np.ndarray]:
  """The run's held-out identities' images, uint8 (n, S, S, 3) by label, in stored order."""
  from arcface_jax.data.synthetic import load_synthetic
  from arcface_jax.faces import FaceRecognizer

  data = FaceRecognizer.load(workdir).model.config.data
  source = load_synthetic(data.synthetic_variant, data.data_dir, 'test')
  labels = np.asarray(source.labels)
  return {
    int(k): np.stack([source[int(i)][0] for i in np.flatnonzero(labels == k)])
    for k in np.unique(labels)
  }


def write_photos(folder, photos: dict[int, np.ndarray]) -> dict[tuple[int, int], str]:
  """Each photo as `<folder>/heldout_<k>_<i>.png`; their paths by (identity, index)."""
  os.makedirs(folder, exist_ok=True)
  paths = {}
  for k, images in photos.items():
    for i, image in enumerate(images):
      paths[k, i] = os.path.join(folder, f'heldout_{k}_{i}.png')
      Image.fromarray(image).save(paths[k, i])
  return paths


def enrol_gallery(workdir: str, paths: dict[tuple[int, int], str], out: str) -> str:
  """A gallery of the `ENROLLED` identities (their first `PHOTOS_EACH` photos), saved to `out`."""
  from arcface_jax.faces import FaceRecognizer, Gallery

  people = {f'heldout_{k}': [paths[k, i] for i in range(PHOTOS_EACH)] for k in ENROLLED}
  Gallery.enroll(FaceRecognizer.load(workdir), people, aligned=True).save(out)
  return out


def export_as_face_model(workdir: str, out: str) -> str:
  """The run's backbone exported with an info saying its inputs are photos to detect faces in."""
  import dataclasses

  from arcface_jax import export, inference, models, parallel
  from arcface_jax.faces import FaceRecognizer

  recognizer = FaceRecognizer.load(workdir)
  info = dataclasses.replace(recognizer.info, detect_faces=True)
  variables = inference.load_embedder(workdir, mesh=parallel.make_mesh(1)).variables
  export.save(
    out,
    models.from_config(recognizer.model.config),
    variables,
    info.image_size,
    platforms=('cpu',),
    info=info,
  )
  return out
