"""The ArcFace paper's loss comparison on CASIA-WebFace with ResNet-50 (LFW/CFP-FP/AgeDB table).

One recipe, one argument per row of the table: softmax, norm_softmax, sphereface (the paper's
SphereFace 1.35: combined m1=1.35), cosface (0.35), arcface (0.5, the default), cm1 (1, 0.3, 0.2),
cm2 (0.9, 0.4, 0.15), triplet (angular margin 0.35), arcface_intra, arcface_inter,
arcface_intra_inter, arcface_triplet. Dataset, backbone, s, batch and the step schedule are the
`casia` row of configs/recipes.py; evaluated on lfw, cfp_fp and agedb_30 (.bin files next to the
data). The triplet rows draw batches of 128 identities × 4 images so every anchor has positives.
Append `,tiny` to any row for a seconds-long CPU smoke run on a small packed RecordIO. Commands:

  python -m arcface_jax.train --config configs/casia.py:cosface --workdir runs/casia_cosface
  python -m arcface_jax.train --config configs/casia.py --workdir runs/casia_arcface
  python -m arcface_jax.train --config configs/casia.py:arcface_intra_inter \
      --workdir runs/casia_arcface_intra_inter --config.data.path=data/faces_webface_112x112
  python -m arcface_jax.train --config configs/casia.py:cm2,tiny --workdir /tmp/casia_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO
"""

from typing import Any

from arcface_jax.config_files import (
  RecipeOptionError,
  apply_recipe_row,
  load_base,
  recipe_row,
  shrink_to_smoke_test,
)

# Row of the table -> loss settings (everything else is the paper's default for the name).
VARIANTS: dict[str, dict[str, Any]] = {
  'softmax': dict(name='softmax'),
  'norm_softmax': dict(name='norm_softmax'),
  'sphereface': dict(name='combined', m1=1.35, m2=0.0, m3=0.0),
  'cosface': dict(name='cosface', m=0.35),
  'arcface': dict(name='arcface', m=0.5),
  'cm1': dict(name='combined', m1=1.0, m2=0.3, m3=0.2),
  'cm2': dict(name='combined', m1=0.9, m2=0.4, m3=0.15),
  'triplet': dict(name='triplet', triplet_margin=0.35),
  'arcface_intra': dict(name='arcface', m=0.5, intra_weight=1.0),
  'arcface_inter': dict(name='arcface', m=0.5, inter_weight=1.0),
  'arcface_intra_inter': dict(name='arcface', m=0.5, intra_weight=1.0, inter_weight=1.0),
  'arcface_triplet': dict(name='arcface', m=0.5, triplet_weight=1.0, triplet_margin=0.35),
}
# Rows whose loss needs positives in every batch: P identities × K images (FaceNet-style batches).
IMAGES_PER_IDENTITY = {'triplet': 4, 'arcface_triplet': 4}


def get_config(arg: str | None = None):
  parts = [p for p in (arg or '').split(',') if p]
  tiny = 'tiny' in parts
  rows = [p for p in parts if p != 'tiny']
  if len(rows) > 1 or any(r not in VARIANTS for r in rows):
    raise RecipeOptionError(
      f'configs/casia.py: unknown variant {arg!r}; use one of {sorted(VARIANTS)}, '
      'optionally with ,tiny'
    )
  variant = rows[0] if rows else 'arcface'

  config = load_base(__file__)
  row = recipe_row(__file__, 'casia')  # data, backbone, schedule and s; the loss is the variant's
  apply_recipe_row(config, {**row, 'loss': {'s': row['loss']['s']}})
  for key, value in VARIANTS[variant].items():
    setattr(config.loss, key, value)
  config.data.images_per_identity = IMAGES_PER_IDENTITY.get(variant, 0)
  if tiny:
    shrink_to_smoke_test(config)
  return config
