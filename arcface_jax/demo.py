"""`make demo`: train on the embedded synthetic identities and evaluate on held-out ones.

Trains configs/synthetic.py from scratch (or finishes/reuses the run in --workdir), then scores
the same network untrained (the run's initial weights: same seed, same weights) and trained on
held-out identities with the LFW protocol, and ends with the line
`held-out verification accuracy: A ± S (N pairs)`. The figures are the analysis package's, drawn
from the finished run (`make demo` runs `analysis.logit_curves` and `analysis.angles` after it).

  python -m arcface_jax.demo --workdir runs/demo [--config configs/synthetic.py]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from absl import app, logging

from arcface_jax import commands


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = commands.parser('arcface_jax.demo', __doc__)
  parser.add_argument('--workdir', default='runs/demo', help='where the demo run is written')
  parser.add_argument('--config', default='configs/synthetic.py', help='recipe to train')
  return parser.parse_args(argv[1:])


def _usage_error(error: BaseException) -> None:
  logging.error('%s', error)
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def main(args: argparse.Namespace) -> None:
  from arcface_jax import models, parallel, trainer
  from arcface_jax.config_files import RecipeOptionError, load_config
  from arcface_jax.data.errors import DatasetError
  from arcface_jax.evaluation.verification_evaluator import VerificationEvaluator
  from arcface_jax.inference import embedder_from_variables

  workdir = args.workdir
  # A bad recipe option, config value or dataset: one line and exit 2, as arcface_jax.train.
  try:
    config = load_config(args.config)
    state = trainer.train_and_evaluate(config, workdir)
  except (RecipeOptionError, trainer.ConfigError, DatasetError, FileNotFoundError) as e:
    _usage_error(e)

  mesh = parallel.make_mesh()
  embed = models.jit_embed_fn(models.from_config(config))
  evaluator = VerificationEvaluator(config)  # its sets() and score(), beyond run()
  name, images, issame = evaluator.sets()[0]
  # The run's starting point: the trainer's initial weights for the same seed.
  untrained_vars = models.initial_variables(config)
  trained_vars = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
  untrained, trained = (
    evaluator.score(
      embedder_from_variables(config, embed, variables, step, mesh), name, images, issame
    )
    for variables, step in ((untrained_vars, 0), (trained_vars, int(state.step)))
  )
  print(
    f'untrained network accuracy: {untrained["accuracy"]:.4f} ± {untrained["std"]:.4f} '
    f'({len(issame)} pairs)'
  )
  print(
    f'held-out verification accuracy: {trained["accuracy"]:.4f} ± {trained["std"]:.4f} '
    f'({len(issame)} pairs)'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
