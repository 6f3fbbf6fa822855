"""`make demo`: train on the embedded synthetic identities, evaluate, and draw the figures.

Trains configs/synthetic.py from scratch (or finishes/reuses the run in --workdir), then scores
the same network untrained and trained on held-out identities with the LFW protocol, and ends with
the line `held-out verification accuracy: A ± S (N pairs)`.

  python -m arcface_jax.demo --workdir runs/demo [--config configs/synthetic.py] [--no-figures]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import jax
from absl import app, logging

from arcface_jax import commands


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = commands.parser('arcface_jax.demo', __doc__)
  parser.add_argument('--workdir', default='runs/demo', help='where the demo run is written')
  parser.add_argument('--config', default='configs/synthetic.py', help='recipe to train')
  parser.add_argument('--figures', action=argparse.BooleanOptionalAction, default=True,
                      help='write the analysis figures after training')
  return parser.parse_args(argv[1:])


def _usage_error(error: BaseException) -> None:
  logging.error('%s', error)
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def main(args: argparse.Namespace) -> None:
  from arcface_jax import trainer
  from arcface_jax.config_files import RecipeOptionError, load_config
  from arcface_jax.evaluation import evaluators
  from arcface_jax.inference import embedder_from_variables
  from arcface_jax.train_step import make_embed_fn

  from arcface_jax.data.errors import DatasetError

  workdir = args.workdir
  # A bad recipe option, config value or dataset: one line and exit 2, as arcface_jax.train.
  try:
    config = load_config(args.config)
    state = trainer.train_and_evaluate(config, workdir)
  except (RecipeOptionError, trainer.ConfigError, DatasetError, FileNotFoundError) as e:
    _usage_error(e)

  mesh = trainer.parallel.make_mesh()
  model = trainer.build_model(config)
  embed = jax.jit(make_embed_fn(model))
  evaluator = evaluators.get('verification', config)
  name, images, issame = evaluator.sets()[0]
  # The untrained network: the same initialisation the run started from.
  init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  untrained_vars = model.init({'params': init_rng, 'dropout': init_rng},
                              images[:2].astype('float32'), train=False)
  trained_vars = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
  untrained, trained = (
      evaluator.score(embedder_from_variables(config, embed, variables, step, mesh), name, images,
                      issame)
      for variables, step in ((untrained_vars, 0), (trained_vars, int(state.step))))
  if args.figures:
    _write_figures(workdir)
  print(f'untrained network accuracy: {untrained["accuracy"]:.4f} ± {untrained["std"]:.4f} '
        f'({len(issame)} pairs)')
  print(f'held-out verification accuracy: {trained["accuracy"]:.4f} ± {trained["std"]:.4f} '
        f'({len(issame)} pairs)')


def _write_figures(workdir: str) -> None:
  """The logit-curve figure and the run's angle histograms at each kept checkpoint."""
  from analysis import angles, logit_curves
  out = os.path.join(workdir, 'figures')
  logit_curves.write(out)
  angles.write_for_run(workdir, out, max_samples=1000, num_pairs=500)
  print(f'figures written to {out}')

if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
