"""The reference trainer's Glint360K recipe: IResNet-100, CosFace s=64 m=0.4, Partial FC r=0.1.

Glint360K (360,232 identities, 17,091,657 images, RecordIO), global batch 1024 (128 per device on
8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 1024 scaled linearly with the global
batch, polynomial decay to 0 over 20 epochs, bf16 trunk with fp32 head, backbone gradient clip 5.
The centres are split over the devices and each device uses 10% of its centres per step (every
positive of the global batch plus random negatives, redrawn each step); Partial FC 0.1 matches
1.0 in accuracy (IJB-C 97.3 for both, REFERENCE §2). `:lazy` updates only the sampled centres.
Commands:

  python -m arcface_jax.train --config configs/glint360k_r100.py --workdir runs/glint360k_r100 \
      --config.data.path=data/glint360k
  sbatch launch/slurm.sbatch configs/glint360k_r100.py runs/glint360k_r100  # several GPU hosts
  python -m arcface_jax.train --config configs/glint360k_r100.py:tiny --workdir /tmp/glint_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (20 × 17,091,657 / batch).
"""
from arcface_jax.config_files import load_base

NUM_IMAGES = 17_091_657
NUM_CLASSES = 360_232
EPOCHS = 20
BATCH = 1024


def get_config(arg: str | None = None):
  config = load_base(__file__)
  config.data.source = 'recordio'
  config.data.path = 'data/glint360k'
  config.data.num_classes = NUM_CLASSES
  config.data.image_size = 112
  config.model.name = 'iresnet100'
  config.model.embedding_dim = 512
  config.model.dtype = 'bfloat16'
  config.loss.name = 'cosface'
  config.loss.s = 64.0
  config.loss.m = 0.4
  config.head.model_parallel = True
  config.head.sample_rate = 0.1
  config.train.batch_size = BATCH
  config.train.learning_rate = 0.1 * BATCH / 1024
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 0
  config.train.num_steps = EPOCHS * (NUM_IMAGES // BATCH)
  config.train.weight_decay = 5e-4
  config.train.momentum = 0.9
  config.train.clip_grad_norm = 5.0
  config.train.checkpoint_every = 2_000
  config.eval.every_steps = 2_000
  config.eval.bins = ('lfw', 'cfp_fp', 'agedb_30')
  config.eval.bin_dir = config.data.get_ref('path')  # follows --config.data.path
  variants = (arg or '').split(',')
  if 'lazy' in variants:
    config.head.lazy_update = True
  if 'tiny' in variants:
    config.data.num_classes = 0  # read from the small dataset
    config.data.image_size = 16
    config.model.name = 'iresnet_tiny'
    config.model.embedding_dim = 32
    config.model.dtype = 'float32'
    config.train.batch_size = 16
    config.train.learning_rate = 0.1 * 16 / 1024
    config.train.num_steps = 3
    config.train.log_every = 1
    config.train.checkpoint_every = 0
    config.eval.every_steps = 0
    config.eval.bins = ()
  unknown = set(variants) - {'', 'lazy', 'tiny'}
  if unknown:
    raise ValueError(f'configs/glint360k_r100.py: unknown variant(s) {sorted(unknown)}; use '
                     'lazy and/or tiny')
  return config
