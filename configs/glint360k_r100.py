"""The reference trainer's Glint360K recipe: IResNet-100, CosFace, Partial FC.

RecordIO, global batch 1024 (128 per device on 8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at
batch 1024 scaled linearly with the global batch, linear warm-up (none by default) then polynomial
decay to 0 over the row's epochs, bf16 trunk with fp32 head, backbone gradient clip 5
(`apply_reference_recipe`). Dataset, sizes, backbone, margin, sample rate and the published result
are its row in configs/recipes.py (the README's recipe table is generated from it). The centres are
split over the devices and each device uses a fraction of its centres per step (every positive of
the global batch plus random negatives, redrawn each step); Partial FC 0.1 matches 1.0 in accuracy
(An et al., Partial FC, ICCV 2021 workshops). `:lazy` updates only the sampled centres. Commands:

  python -m arcface_jax.train --config configs/glint360k_r100.py --workdir runs/glint360k_r100 \
      --config.data.path=data/glint360k
  sbatch launch/slurm.sbatch configs/glint360k_r100.py runs/glint360k_r100  # several GPU hosts
  python -m arcface_jax.train --config configs/glint360k_r100.py:tiny --workdir /tmp/glint_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (epochs × images / batch, from configs/recipes.py).
"""

from arcface_jax.config_files import (
  apply_recipe_row,
  load_base,
  recipe_options,
  recipe_row,
  shrink_to_smoke_test,
)


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'lazy', 'tiny'})
  config = load_base(__file__)
  apply_recipe_row(config, recipe_row(__file__, 'glint360k_r100'))  # data, backbone, loss, schedule
  config.head.lazy_update = 'lazy' in options
  if 'tiny' in options:
    shrink_to_smoke_test(config)
  return config
