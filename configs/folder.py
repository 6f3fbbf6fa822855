"""Your own photos: a folder per person, 90% of the identities to train on and 10% held out.

  faces/<person>/<photo>.{jpg,jpeg,png,bmp}      (aligned 112×112 crops, or any size: resized)

Align raw photos first with `python -m arcface_jax.data.align` (5 landmarks per photo). The held-out
identities are chosen by a hash of their names (`config.data.split_seed`), so the split is the same
on every run and machine, and verification accuracy on pairs drawn from them (`[val][step]
Accuracy-Flip`) is open-set, as LFW is. MobileFaceNet with ArcFace (s=64, m=0.5); rotation ±10° and
mild colour jitter because personal datasets are small. Commands:

  python -m arcface_jax.train --config configs/folder.py --workdir runs/mine \
      --config.data.path=faces
  python -m arcface_jax.train --config configs/folder.py --workdir runs/mine \
      --config.data.path=faces --config.data.split_by=image   # closed set: every person trains
  python -m arcface_jax.train --config configs/folder.py:tiny --workdir /tmp/folder_smoke \
      --config.data.path=SMALL_FOLDER_TREE
  python -m arcface_jax.train --config configs/folder.py:cpu --workdir runs/mine \
      --config.data.path=faces   # personal photos on a laptop CPU

Steps: 20,000 of batch 128 is about 40 epochs of 64,000 photos; scale `train.num_steps` with yours.
That default is sized for a GPU (its step needs 10.5 GiB; about 110 hours on a 2-core CPU:
benchmarks/recipe_memory.py). `:cpu` is sized for a few thousand personal photos on a laptop
(1.7 GiB, about 2 hours on 2 cores):
MobileFaceNet at 64 px (the 112-px crops are resized on load; the faces commands align at 64 px),
128-d embeddings, batch 64, 3,000 steps.
"""

from arcface_jax.config_files import load_base, recipe_options, shrink_to_smoke_test


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'tiny', 'cpu'})
  config = load_base(__file__)
  config.data.source = 'folder'
  config.data.path = ''  # required: --config.data.path=/path/to/faces
  config.data.split_by = 'identity'
  config.data.val_fraction = 0.1
  config.data.image_size = 112
  config.data.rotation_degrees = 10.0
  config.data.color_jitter = 0.2
  config.model.name = 'mobilefacenet'
  config.model.embedding_dim = 512
  config.loss.name = 'arcface'
  config.loss.s = 64.0
  config.loss.m = 0.5
  config.train.batch_size = 128
  config.train.num_steps = 20_000
  config.train.learning_rate = 0.1
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 1_000
  config.train.checkpoint_every = 1_000
  config.eval.every_steps = 1_000
  config.eval.val_pairs = 2_000
  if 'cpu' in options:
    config.data.image_size = 64
    config.model.embedding_dim = 128
    config.train.batch_size = 64
    config.train.num_steps = 3_000
    config.train.learning_rate = 0.05
    config.train.warmup_steps = 200
    config.train.checkpoint_every = 500
    config.eval.every_steps = 500
    config.eval.val_pairs = 1_000
  if 'tiny' in options:
    shrink_to_smoke_test(config)
    config.data.val_fraction = 0.25  # 2 of the test tree's 8 identities: enough for pairs
    config.train.warmup_steps = 1
    config.eval.val_pairs = 40
    config.eval.batch_size = 32
  return config
