"""The page with no `--model`: the embedded demo model and a gallery of held-out identities.

Nothing is downloaded. The model is `runs/demo`, the run `make demo` trains on the embedded
synthetic identities (configs/synthetic.py); when it is missing or unfinished it is trained
first with `python -m arcface_jax.demo` (a few minutes on a laptop CPU). Its inputs are 32×32
crops, not photos of faces, so the page takes uploads as aligned crops.

The gallery (`<workdir>/people.gallery`) is made at the first start from held-out identities,
which the model never trained on. They keep the names the calibration set gives them
(`heldout_<k>`), so an enrolled person's other photos are not counted among the strangers that
set the "unknown" threshold. Sample uploads are written as PNG files to `<workdir>/app_examples/`:
unseen photos of enrolled people and of strangers, pairs to verify, and a person to enrol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from arcface_jax.app.page import Examples
from arcface_jax.faces import FaceRecognizer, Gallery

DEFAULT_WORKDIR = 'runs/demo'
ENROLLED = 8  # held-out identities in the default gallery: labels 0 .. ENROLLED-1
ENROL_PHOTOS = 5  # the first photos of each; the later ones are left for the samples
STRANGERS = (90, 91, 95)  # held-out identities never enrolled: they should come out unknown
TO_ENROL = 50  # the sample person of the Enrol tab


def heldout_name(label: int) -> str:
  """The name the calibration set gives a held-out synthetic identity."""
  return f'heldout_{label}'


def is_trained(workdir: str) -> bool:
  """Whether `workdir` holds a run whose last checkpoint is at its final step."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      num_steps = int(json.load(f)['train']['num_steps'])
    steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  except (OSError, ValueError, KeyError):
    return False
  return bool(steps) and max(steps) >= num_steps


def ensure_trained(workdir: str) -> None:
  """Trains (or finishes) the demo run in `workdir`, in a child process, if it is not done."""
  if is_trained(workdir):
    return
  print(
    f'{workdir}: no finished demo model; training it now on the embedded synthetic '
    'identities (`python -m arcface_jax.demo`, a few minutes on a CPU; once)',
    flush=True,
  )
  command = [sys.executable, '-m', 'arcface_jax.demo', '--workdir', workdir]
  result = subprocess.run(command)
  if result.returncode != 0 or not is_trained(workdir):
    raise SystemExit(
      f'training the demo model failed (exit {result.returncode}): {" ".join(command)}'
    )


def _heldout_photos(recognizer: FaceRecognizer) -> dict[int, np.ndarray]:
  """The held-out identities' images (uint8 (n, S, S, 3)), by label, in stored order."""
  from arcface_jax.data.synthetic import load_synthetic

  data = recognizer.model.config.data
  source = load_synthetic(data.synthetic_variant, data.data_dir, 'test')
  labels = np.asarray(source.labels)
  wanted = set(range(ENROLLED)) | set(STRANGERS) | {TO_ENROL}
  photos: dict[int, list[np.ndarray]] = {label: [] for label in wanted}
  for index in np.flatnonzero(np.isin(labels, list(wanted))):
    photos[int(labels[index])].append(source[int(index)][0])
  return {label: np.stack(images) for label, images in photos.items()}


def _write(folder: str, name: str, image: np.ndarray) -> None:
  Image.fromarray(image).save(os.path.join(folder, f'{name}.png'))


def prepare(recognizer: FaceRecognizer, workdir: str, gallery_path: str) -> Examples:
  """The demo's gallery and sample uploads (made when missing) for the model in `workdir`."""
  folder = os.path.join(workdir, 'app_examples')
  done = os.path.join(folder, 'done')
  if not os.path.exists(gallery_path) or not os.path.exists(done):
    photos = _heldout_photos(recognizer)
  if not os.path.exists(gallery_path):
    print(f'enrolling {ENROLLED} held-out identities into {gallery_path}', flush=True)
    people = {heldout_name(k): list(photos[k][:ENROL_PHOTOS]) for k in range(ENROLLED)}
    Gallery.enroll(recognizer, people, aligned=True).save(gallery_path)
  if not os.path.exists(done):
    os.makedirs(folder, exist_ok=True)
    for k in range(3):
      for i in (ENROL_PHOTOS, ENROL_PHOTOS + 1):
        _write(folder, f'{heldout_name(k)}_{i}', photos[k][i])
    for k in STRANGERS:
      _write(folder, f'{heldout_name(k)}_0', photos[k][0])
    for i in range(3):
      _write(folder, f'{heldout_name(TO_ENROL)}_{i}', photos[TO_ENROL][i])
    open(done, 'w').close()
  path = lambda name: os.path.join(folder, f'{name}.png')
  first, second = ENROL_PHOTOS, ENROL_PHOTOS + 1
  return Examples(
    identify=[path(f'{heldout_name(k)}_{first}') for k in range(3)]
    + [path(f'{heldout_name(k)}_0') for k in STRANGERS[:2]],
    verify=[
      (path(f'{heldout_name(0)}_{first}'), path(f'{heldout_name(0)}_{second}')),
      (path(f'{heldout_name(1)}_{first}'), path(f'{heldout_name(STRANGERS[2])}_0')),
    ],
    enrol=[(heldout_name(TO_ENROL), [path(f'{heldout_name(TO_ENROL)}_{i}') for i in range(3)])],
    note=(
      f'**Embedded demo**: a tiny model trained on synthetic identities (`{workdir}`); '
      f'the gallery holds {ENROLLED} held-out identities it never trained on '
      f'(`heldout_0` … `heldout_{ENROLLED - 1}`). The samples below are unseen photos of '
      f'them and of strangers ({", ".join(heldout_name(k) for k in STRANGERS[:2])}). '
      'For real photos start the page with a face model: '
      '`python -m arcface_jax.app --model runs/mine`.'
    ),
  )
