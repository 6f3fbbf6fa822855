"""The reference trainer's WebFace42M recipe: IResNet-100, ArcFace s=64 m=0.5, Partial FC r=0.2.

WebFace42M (2,059,906 identities, 42,474,557 images, RecordIO), global batch 1024 (128 per device
on 8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 1024 scaled linearly with the global
batch, polynomial decay to 0 over 20 epochs, bf16 trunk with fp32 head, backbone gradient clip 5.
Two million centres (4 GB in fp32, 12 GB with gradient and momentum) are split over the devices
and each device uses 20% of its centres per step: every positive of the global batch plus random
negatives, redrawn each step. Published: IJB-C TAR@FAR=1e-4 97.70 (REFERENCE §7). `:lazy` updates
only the sampled centres. Commands:

  python -m arcface_jax.train --config configs/webface42m_r100.py --workdir runs/wf42m_r100 \
      --config.data.path=data/WebFace42M
  sbatch launch/slurm.sbatch configs/webface42m_r100.py runs/wf42m_r100  # several GPU hosts
  python -m arcface_jax.train --config configs/webface42m_r100.py:tiny --workdir /tmp/wf_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (20 × 42,474,557 / batch).
"""
from arcface_jax.config_files import load_base

NUM_IMAGES = 42_474_557
NUM_CLASSES = 2_059_906
EPOCHS = 20
BATCH = 1024


def get_config(arg: str | None = None):
  config = load_base(__file__)
  config.data.source = 'recordio'
  config.data.path = 'data/WebFace42M'
  config.data.num_classes = NUM_CLASSES
  config.data.image_size = 112
  config.model.name = 'iresnet100'
  config.model.embedding_dim = 512
  config.model.dtype = 'bfloat16'
  config.loss.name = 'arcface'
  config.loss.s = 64.0
  config.loss.m = 0.5
  config.head.model_parallel = True
  config.head.sample_rate = 0.2
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
    raise ValueError(f'configs/webface42m_r100.py: unknown variant(s) {sorted(unknown)}; use '
                     'lazy and/or tiny')
  return config
