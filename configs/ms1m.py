"""The paper's MS1MV2 recipe: IResNet-100, ArcFace s=64 m=0.5, 512-d embeddings.

SGD momentum 0.9, weight decay 5e-4, global batch 512 (128 per device on 4 GPUs), lr 0.1 divided
by 10 at 100K and 160K steps, 180K steps in all. `:poly` switches to the current reference schedule
(linear warm-up, then polynomial decay to 0). Training reads `train.rec`/`train.idx` (MS1M-style
RecordIO) from data.path. Commands:

  python -m arcface_jax.train --config configs/ms1m.py --workdir runs/ms1m \
      --config.data.path=data/faces_emore
  python -m arcface_jax.train --config configs/ms1m.py:poly --workdir runs/ms1m_poly
  python -m arcface_jax.train --config configs/ms1m.py:tiny --workdir /tmp/ms1m_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

With more devices, scale the batch and learning rate together (the reference scales lr linearly
with the global batch: 0.1 at 1024).
"""
from arcface_jax.config_files import load_base, recipe_options, shrink_to_smoke_test


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'poly', 'tiny'})
  config = load_base(__file__)
  config.data.source = 'recordio'
  config.data.path = 'data/faces_emore'
  config.data.image_size = 112
  config.model.name = 'iresnet100'
  config.model.embedding_dim = 512
  config.model.dtype = 'bfloat16'
  config.loss.name = 'arcface'
  config.loss.s = 64.0
  config.loss.m = 0.5
  # 85,742 class centres split over the devices (every centre used each step, sample_rate 1.0).
  config.head.model_parallel = True
  config.train.batch_size = 512
  config.train.learning_rate = 0.1
  config.train.schedule = 'step'
  config.train.lr_boundaries = (100_000, 160_000)
  config.train.num_steps = 180_000
  config.eval.every_steps = 2_000
  config.eval.bins = ('lfw', 'cfp_fp', 'agedb_30')
  config.eval.bin_dir = config.data.get_ref('path')  # follows --config.data.path
  if 'poly' in options:
    config.train.schedule = 'warmup_poly'
    config.train.warmup_steps = 2_000
  if 'tiny' in options:
    shrink_to_smoke_test(config)
  return config
