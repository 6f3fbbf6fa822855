"""The analysis toy: small_cnn with a 2-d (or 3-d) embedding on scikit-learn's digits.

Features of the digits 0-7 on the circle (as the paper's toy: 8 classes, 2-d features), or of all
ten on the sphere with ',3d', make each loss's margin visible; one run per
loss takes about a minute on 2 CPU cores, and `make figures` trains them all and writes the
report (analysis/toy_figures.py). The argument is the loss, optionally followed by ',3d' (a 3-d
embedding) and ',tiny' (a few steps, for tests):

  python -m arcface_jax.train --config configs/toy.py:arcface --workdir runs/toy/arcface
  python -m arcface_jax.train --config configs/toy.py:cm2,3d --workdir runs/toy3d/cm2

Losses: softmax, norm_softmax, sphereface (A-softmax m=4), sphereface135 (combined m1=1.35),
cosface, arcface, cm1, cm2, with the paper's margins and a scale of 16 (64 saturates the
softmax of an 8-class, 2-d problem at once).
"""

from arcface_jax.config_files import RecipeOptionError, load_base

# toy name → (loss.name, margin fields); None fields keep the paper's defaults.
LOSSES = {
  'softmax': ('softmax', {}),
  'norm_softmax': ('norm_softmax', {}),
  'sphereface': ('sphereface', {}),
  'sphereface135': ('combined', dict(m1=1.35, m2=0.0, m3=0.0)),
  'cosface': ('cosface', {}),
  'arcface': ('arcface', {}),
  'cm1': ('combined', dict(m1=1.0, m2=0.3, m3=0.2)),
  'cm2': ('combined', dict(m1=0.9, m2=0.4, m3=0.15)),
}
SCALE = 16.0


def get_config(arg: str | None = None):
  name, *options = (arg or 'arcface').split(',')
  if name in ('3d', 'tiny'):  # options alone: the default loss
    name, options = 'arcface', [name] + options
  if name not in LOSSES:
    raise RecipeOptionError(
      f'configs/toy.py: unknown loss {name!r}; use one of {sorted(LOSSES)}, '
      'optionally followed by ,3d and/or ,tiny'
    )
  unknown = set(options) - {'3d', 'tiny'}
  if unknown:
    raise RecipeOptionError(f'configs/toy.py: unknown options {sorted(unknown)}; valid: 3d, tiny')
  config = load_base(__file__)
  config.data.source = 'digits'
  config.data.image_size = 16
  config.data.flip = False  # a mirrored digit is another glyph
  config.model.name = 'small_cnn'
  config.model.embedding_dim = 3 if '3d' in options else 2
  # The paper's 2-d toy has 8 identities: 45° apart they leave room for a margin of 0.5 rad on
  # the circle, where ten classes (36°) crowd; on the sphere all ten digits fit.
  config.data.num_classes = 10 if '3d' in options else 8
  loss_name, fields = LOSSES[name]
  config.loss.name = loss_name
  if loss_name not in ('softmax', 'sphereface'):  # softmax has no scale, A-softmax uses ||x||
    config.loss.s = SCALE
  for key, value in fields.items():
    setattr(config.loss, key, value)
  # Unit-norm class centres (E‖w‖² = 1). With the reference's N(0, 0.01²) a 2-d centre has norm
  # ~0.014, its gradient is magnified ~70×, and the first steps fling the norms to 10–100, after
  # which the centres' directions barely move: the classes end up bunched in one half-circle.
  config.head.init_std = config.model.embedding_dim**-0.5
  config.train.batch_size = 128
  config.train.num_steps = 400
  config.train.learning_rate = 0.1
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 50
  config.train.weight_decay = 5e-4
  config.train.log_every = 50
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 4  # the angle figure shows the margin forming over these
  config.eval.every_steps = 0
  config.eval.synthetic_pairs = 0  # verification: held-out digit pairs, scored by the analysis
  config.eval.batch_size = 256
  if 'tiny' in options:
    config.train.batch_size = 32
    config.train.num_steps = 6
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.train.keep_checkpoints = 3
  return config
