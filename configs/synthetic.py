"""The embedded demo: a tiny IResNet trained with ArcFace on procedurally generated identities.

Needs nothing downloaded (the synthetic dataset is generated into data/ on first use) and trains in
a few minutes on 2 CPU cores; `make demo` runs it. Commands:

  python -m arcface_jax.train --config configs/synthetic.py --workdir runs/demo
  python -m arcface_jax.train --config configs/synthetic.py:tiny --workdir /tmp/smoke   # seconds
"""

from arcface_jax.config_files import RecipeOptionError, load_base


def get_config(arg: str | None = None):
  config = load_base(__file__)
  config.data.source = 'synthetic'
  config.data.synthetic_variant = 'demo'
  config.data.image_size = 32
  config.model.name = 'iresnet_tiny'
  config.model.embedding_dim = 128
  config.loss.name = 'arcface'
  config.loss.s = 32.0
  config.loss.m = 0.5
  config.train.batch_size = 128
  config.train.num_steps = 600
  config.train.learning_rate = 0.1
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 100
  config.train.log_every = 100
  config.train.checkpoint_every = 150
  config.train.keep_checkpoints = 4  # the angle figures show the margin forming over these
  config.eval.every_steps = 300
  config.eval.synthetic_pairs = 1000
  if arg == 'tiny':
    config.data.synthetic_variant = 'tiny'
    config.data.image_size = 16
    config.model.embedding_dim = 32
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.eval.every_steps = 0
    config.eval.synthetic_pairs = 40
    config.eval.batch_size = 32
  elif arg:
    raise RecipeOptionError(
      f'configs/synthetic.py: unknown variant {arg!r}; use no argument or :tiny'
    )
  return config
