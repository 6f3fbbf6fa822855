"""Folders of synthetic people for the faces tests: one sub-folder of aligned crops per person.

The crops are `render_identity` images (16×16 by default), from seeds outside the tiny run's
training and held-out ranges, so they show people the model never saw.
"""

from __future__ import annotations

import os

import cv2

from arcface_jax.data.synthetic import render_identity

PEOPLE_SEED, STRANGER_SEED = 5_000_000, 7_000_000  # neither trained on nor held out


def write_people(root, seed: int, people: int, photos: int, prefix: str, size: int = 16):
  """`root/<prefix>_<k>/<i>.png` for `people` people with `photos` crops each; returns root."""
  for k in range(people):
    os.makedirs(root / f'{prefix}_{k}', exist_ok=True)
    for i, image in enumerate(render_identity(seed + k, photos, size, image_seed=1)):
      cv2.imwrite(str(root / f'{prefix}_{k}' / f'{i}.png'), image[..., ::-1])
  return root
