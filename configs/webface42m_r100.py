"""The reference trainer's WebFace42M recipe: IResNet-100, ArcFace s=64 m=0.5, Partial FC r=0.2.

WebFace42M (2,059,906 identities, 42,474,557 images, RecordIO), global batch 1024 (128 per device
on 8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 1024 scaled linearly with the global
batch, polynomial decay to 0 over 20 epochs, bf16 trunk with fp32 head, backbone gradient clip 5
(`apply_reference_recipe`). Two million centres (4 GB in fp32, 12 GB with gradient and momentum)
are split over the devices and each device uses 20% of its centres per step: every positive of
the global batch plus random negatives, redrawn each step. Published: IJB-C TAR@FAR=1e-4 97.70
(REFERENCE §7). `:lazy` updates only the sampled centres. Commands:

  python -m arcface_jax.train --config configs/webface42m_r100.py --workdir runs/wf42m_r100 \
      --config.data.path=data/WebFace42M
  sbatch launch/slurm.sbatch configs/webface42m_r100.py runs/wf42m_r100  # several GPU hosts
  python -m arcface_jax.train --config configs/webface42m_r100.py:tiny --workdir /tmp/wf_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (20 × 42,474,557 / batch).
"""
from arcface_jax.config_files import (apply_reference_recipe, load_base, recipe_options,
                                      shrink_to_smoke_test)


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'lazy', 'tiny'})
  config = load_base(__file__)
  apply_reference_recipe(config, num_images=42_474_557, num_classes=2_059_906)
  config.data.path = 'data/WebFace42M'
  config.model.name = 'iresnet100'
  config.loss.name = 'arcface'
  config.loss.m = 0.5
  config.head.sample_rate = 0.2
  config.head.lazy_update = 'lazy' in options
  if 'tiny' in options:
    shrink_to_smoke_test(config)
  return config
