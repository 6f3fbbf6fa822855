"""`make demo`: train on the embedded synthetic identities and evaluate on held-out ones.

Trains configs/synthetic.py from scratch (or finishes/reuses the run in --workdir), then scores
the same network untrained (the run's initial weights: same seed, same weights) and trained on
held-out identities with the LFW protocol, and ends with the line
`held-out verification accuracy: A ± S (N pairs)`. The figures are the analysis package's, drawn
from the finished run (`make demo` runs `analysis.logit_curves` and `analysis.angles` after it).
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string('workdir', 'runs/demo', 'Where the demo run is written.')
_CONFIG = flags.DEFINE_string('config', 'configs/synthetic.py', 'Recipe to train.')


def _usage_error(error: BaseException) -> None:
  logging.error('%s', error)
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def main(argv: Sequence[str]) -> None:
  del argv
  from arcface_jax import models, parallel, trainer
  from arcface_jax.config_files import RecipeOptionError, load_config
  from arcface_jax.data.errors import DatasetError
  from arcface_jax.evaluation import evaluators

  workdir = _WORKDIR.value
  # A bad recipe option, config value or dataset: one line and exit 2, as arcface_jax.train.
  try:
    config = load_config(_CONFIG.value)
    state = trainer.train_and_evaluate(config, workdir)
  except (RecipeOptionError, trainer.ConfigError, DatasetError, FileNotFoundError) as e:
    _usage_error(e)

  model = models.from_config(config)
  evaluator = evaluators.Evaluator(config, mesh=parallel.make_mesh(),
                                   embed_fn=models.make_embed_fn(model))
  _, images, issame = evaluators.load_sets(config)[0]
  # The run's starting point: the trainer's initial weights for the same seed.
  untrained = evaluator.evaluate_set(models.initial_variables(config), images, issame)
  trained = evaluator.evaluate_set(
      {'params': state.params['backbone'], 'batch_stats': state.batch_stats}, images, issame)
  print(f'untrained network accuracy: {untrained["accuracy"]:.4f} ± {untrained["std"]:.4f} '
        f'({len(issame)} pairs)')
  print(f'held-out verification accuracy: {trained["accuracy"]:.4f} ± {trained["std"]:.4f} '
        f'({len(issame)} pairs)')


if __name__ == '__main__':
  app.run(main)
