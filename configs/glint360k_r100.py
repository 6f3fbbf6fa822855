"""The reference trainer's Glint360K recipe: IResNet-100, CosFace s=64 m=0.4, Partial FC r=0.1.

Glint360K (360,232 identities, 17,091,657 images, RecordIO), global batch 1024 (128 per device on
8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 1024 scaled linearly with the global
batch, polynomial decay to 0 over 20 epochs, bf16 trunk with fp32 head, backbone gradient clip 5
(`apply_reference_recipe`). The centres are split over the devices and each device uses 10% of its
centres per step (every positive of the global batch plus random negatives, redrawn each step);
Partial FC 0.1 matches 1.0 in accuracy (IJB-C 97.3 for both, REFERENCE §2). `:lazy` updates only
the sampled centres. Commands:

  python -m arcface_jax.train --config configs/glint360k_r100.py --workdir runs/glint360k_r100 \
      --config.data.path=data/glint360k
  sbatch launch/slurm.sbatch configs/glint360k_r100.py runs/glint360k_r100  # several GPU hosts
  python -m arcface_jax.train --config configs/glint360k_r100.py:tiny --workdir /tmp/glint_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (20 × 17,091,657 / batch).
"""
from arcface_jax.config_files import (apply_reference_recipe, load_base, recipe_options,
                                      shrink_to_smoke_test)


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'lazy', 'tiny'})
  config = load_base(__file__)
  apply_reference_recipe(config, num_images=17_091_657, num_classes=360_232)
  config.data.path = 'data/glint360k'
  config.model.name = 'iresnet100'
  config.loss.name = 'cosface'
  config.loss.m = 0.4
  config.head.sample_rate = 0.1
  config.head.lazy_update = 'lazy' in options
  if 'tiny' in options:
    shrink_to_smoke_test(config)
  return config
