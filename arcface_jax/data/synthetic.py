"""The embedded default dataset: procedurally generated synthetic identities.

Nothing is downloaded. Each identity is a random face-like prototype (face shape and skin tone,
hair, eye spacing and size, brows, nose, mouth, and an identity-specific low-frequency texture);
its images vary by affine jitter, lighting, noise and occlusion. The held-out `test` identities are
disjoint from the `train` identities, so verification on them is open-set, as on LFW.

It is a TFDS builder in array_record format (no TensorFlow), generated into `data_dir` on first
use and read through `tfds.data_source`. Sizes (identities × images per identity, pixels):
'demo' 500 × 20 train + 100 × 20 test at 32×32 (about 6 s to generate on one core), 'tiny'
16 × 8 train + 12 × 8 test at 16×16 for tests. Labels are 0..N−1 within each split.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os

import cv2
import numpy as np
import tensorflow_datasets as tfds

from arcface_jax.data.errors import DatasetError
from arcface_jax.data.pairs import verification_pairs
from arcface_jax.data.tfds_source import TfdsSource, open_tfds

NAME = 'synthetic_faces'


@dataclasses.dataclass(frozen=True)
class Variant:
  """Size of one builder configuration."""

  train_identities: int
  test_identities: int
  images_per_identity: int
  image_size: int


VARIANTS = {
  'demo': Variant(train_identities=500, test_identities=100, images_per_identity=20, image_size=32),
  'tiny': Variant(train_identities=16, test_identities=12, images_per_identity=8, image_size=16),
}
_TEST_SEED_OFFSET = 1_000_003  # test identities draw from a disjoint seed range


def _identity_params(identity_seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(identity_seed)
  return dict(
    face_rx=rng.uniform(0.28, 0.40),
    face_ry=rng.uniform(0.36, 0.46),
    skin=rng.uniform([90, 60, 40], [240, 200, 170]),
    hair=rng.uniform(0, 120, 3),
    hair_line=rng.uniform(0.10, 0.32),
    eye_y=rng.uniform(0.38, 0.48),
    eye_dx=rng.uniform(0.10, 0.20),
    eye_r=rng.uniform(0.035, 0.07),
    iris=rng.uniform(0, 160, 3),
    brow_dy=rng.uniform(0.05, 0.10),
    brow_tilt=rng.uniform(-0.4, 0.4),
    nose_len=rng.uniform(0.08, 0.18),
    nose_w=rng.uniform(0.025, 0.06),
    mouth_y=rng.uniform(0.68, 0.80),
    mouth_w=rng.uniform(0.08, 0.18),
    mouth_h=rng.uniform(0.015, 0.045),
    lips=rng.uniform([120, 30, 30], [230, 120, 120]),
    texture_freq=rng.uniform(2.0, 7.0, (3, 2)) * rng.choice([-1, 1], (3, 2)),
    texture_phase=rng.uniform(0, 2 * np.pi, 3),
    texture_amp=rng.uniform(10, 30),
  )


def render_identity(identity_seed: int, count: int, size: int, image_seed: int) -> np.ndarray:
  """`count` RGB uint8 images (count, size, size, 3) of one identity, deterministic in the seeds."""
  p = _identity_params(identity_seed)
  rng = np.random.default_rng((identity_seed, image_seed))
  n = count
  # Per-image affine jitter: rotation, scale, shift (applied as the inverse map of pixel coords).
  angle = np.radians(rng.uniform(-12, 12, n))[:, None, None]
  scale = rng.uniform(0.88, 1.12, n)[:, None, None]
  shift = rng.uniform(-0.06, 0.06, (n, 2))
  coords = (np.arange(size) + 0.5) / size - 0.5
  yy, xx = np.meshgrid(coords, coords, indexing='ij')
  xr = (np.cos(angle) * xx + np.sin(angle) * yy) / scale - shift[:, 0, None, None]
  yr = (-np.sin(angle) * xx + np.cos(angle) * yy) / scale - shift[:, 1, None, None]
  x, y = xr + 0.5, yr + 0.5  # face coordinates in [0, 1]

  # The background is a nuisance, not an identity cue: a random colour per image.
  background = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
  image = np.broadcast_to(background, (n, size, size, 3)).copy()

  def paint(mask, colour):
    np.copyto(image, np.asarray(colour, np.float32), where=mask[..., None])

  face = ((x - 0.5) / p['face_rx']) ** 2 + ((y - 0.55) / p['face_ry']) ** 2 <= 1.0
  texture = (
    sum(
      np.sin(2 * np.pi * (f[0] * x + f[1] * y) + ph)
      for f, ph in zip(p['texture_freq'], p['texture_phase'])
    )
    * p['texture_amp']
    / 3
  )
  skin = np.clip(p['skin'][None, None, None, :] + texture[..., None], 0, 255)
  np.copyto(image, skin.astype(np.float32), where=face[..., None])
  hair = face & (y < p['hair_line'] + 0.12 * ((x - 0.5) / p['face_rx']) ** 2)
  paint(hair, p['hair'])
  for side in (-1, 1):
    ex = 0.5 + side * p['eye_dx']
    eye = ((x - ex) ** 2 + ((y - p['eye_y']) * 1.6) ** 2) <= p['eye_r'] ** 2
    paint(eye, (235, 235, 235))
    iris = ((x - ex) ** 2 + (y - p['eye_y']) ** 2) <= (0.55 * p['eye_r']) ** 2
    paint(iris, p['iris'])
    brow_y = p['eye_y'] - p['brow_dy'] + side * p['brow_tilt'] * (x - ex) * 0.5
    brow = (np.abs(x - ex) < 1.4 * p['eye_r']) & (np.abs(y - brow_y) < 0.012)
    paint(brow, p['hair'] * 0.6)
  nose = (
    (np.abs(x - 0.5) < p['nose_w'] * (y - p['eye_y']) / p['nose_len'])
    & (y > p['eye_y'])
    & (y < p['eye_y'] + p['nose_len'])
  )
  paint(nose, p['skin'] * 0.75)
  mouth = (((x - 0.5) / p['mouth_w']) ** 2 + ((y - p['mouth_y']) / p['mouth_h']) ** 2) <= 1.0
  paint(mouth, p['lips'])

  # Lighting: a global gain and a linear gradient in a random direction.
  gain = rng.uniform(0.65, 1.25, n)[:, None, None, None]
  direction = rng.uniform(0, 2 * np.pi, n)
  gradient = np.cos(direction)[:, None, None] * xx + np.sin(direction)[:, None, None] * yy
  lit = (
    image * gain * (1.0 + 0.5 * rng.uniform(0, 1, n)[:, None, None, None] * gradient[..., None])
  )  # float64 from here on (gain is)
  # Occlusion: a random grey rectangle on some images.
  for i in np.nonzero(rng.uniform(size=n) < 0.3)[0]:
    h, w = rng.integers(size // 6, size // 3 + 1, 2)
    top, left = rng.integers(0, size - h), rng.integers(0, size - w)
    lit[i, top : top + h, left : left + w] = rng.uniform(0, 255)
  lit += rng.normal(0, 6.0, lit.shape)
  return np.clip(lit, 0, 255).astype(np.uint8)


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the synthetic identities ('demo' and 'tiny' configurations)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'First release.',
    '1.1.0': 'label is a ClassLabel (num_classes = training identities), so the dataset also '
    'works as a generic `tfds` source.',
  }
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name=name, description=str(v)) for name, v in VARIANTS.items()
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    variant = VARIANTS[self.builder_config.name]
    size = variant.image_size
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
          # Test labels (held-out identities) are numbered from 0 too, so they fit in this range.
          'label': tfds.features.ClassLabel(num_classes=variant.train_identities),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    variant = VARIANTS[self.builder_config.name]
    return {
      'train': self._generate_examples(variant, variant.train_identities, 0),
      'test': self._generate_examples(variant, variant.test_identities, _TEST_SEED_OFFSET),
    }

  def _generate_examples(self, variant: Variant, identities: int, seed_offset: int):
    for label in range(identities):
      images = render_identity(
        seed_offset + label, variant.images_per_identity, variant.image_size, image_seed=0
      )
      for k, image in enumerate(images):
        # TFDS cannot encode numpy images without TensorFlow: hand it PNG bytes (RGB → BGR for
        # OpenCV's encoder). PNG is lossless, so what is read back is what was rendered.
        png = cv2.imencode('.png', image[..., ::-1])[1].tobytes()
        yield f'{label:06d}_{k:03d}', {'image': png, 'label': label}


def _builder(variant: str, data_dir: str) -> SyntheticFaces:
  """The prepared builder; the first caller generates it, concurrent callers wait for it."""
  if variant not in VARIANTS:
    raise DatasetError(
      f'unknown synthetic variant {variant!r}; valid: {sorted(VARIANTS)} '
      '(config.data.synthetic_variant)'
    )
  # Local by nature: a generated cache guarded by an flock, which an object store cannot hold.
  data_dir = os.path.abspath(data_dir)
  builder = SyntheticFaces(data_dir=data_dir, config=variant)
  if builder.is_prepared():
    return builder
  os.makedirs(data_dir, exist_ok=True)
  # TFDS writes into an `incomplete.*` directory and renames it when done, so no reader sees half
  # a dataset; the lock stops two processes (e.g. the hosts of one job sharing a disk, or two
  # test workers) from both generating and colliding on that rename.
  lock_path = os.path.join(data_dir, f'.{NAME}_{variant}.lock')
  with open(lock_path, 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder = SyntheticFaces(data_dir=data_dir, config=variant)
      if not builder.is_prepared():
        builder.download_and_prepare(file_format='array_record')
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return builder


def load_synthetic(variant: str, data_dir: str, split: str) -> TfdsSource:
  """The `train` or `test` split of `variant` under `data_dir`, generated on first use."""
  if split not in ('train', 'test'):
    raise DatasetError(f'synthetic dataset split {split!r}: expected "train" or "test"')
  builder = _builder(variant, data_dir)
  info = VARIANTS[variant]
  classes = info.train_identities if split == 'train' else info.test_identities
  return open_tfds(
    f'{NAME}/{variant}', os.path.abspath(data_dir), split, classes, builder.info.features['image']
  )


def synthetic_verification_pairs(
  variant: str, data_dir: str, num_pairs: int, seed: int = 0, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (2N, S, S, 3), issame bool (N,)) from held-out identities, LFW-style.

  Pair i is (images[2i], images[2i + 1]). Deterministic in (variant, num_pairs, seed); each of 10
  contiguous folds holds as many positive as negative pairs (`balanced_fold_labels`). Images are
  resized to `image_size` when given.
  """
  source = load_synthetic(variant, data_dir, 'test')
  # The stored order is TFDS's (shuffled by key), so the pairs are grouped by the read labels.
  return verification_pairs(source, source.labels, num_pairs, seed, image_size)
