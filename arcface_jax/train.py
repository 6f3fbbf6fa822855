"""Trains a face-recognition model from a recipe file (configs/*.py) in a working directory.

  python -m arcface_jax.train --config configs/ms1m.py --workdir runs/ms1m \\
      [--config.train.batch_size=512 ...]
  python -m arcface_jax.train --config configs/toy.py:arcface,tiny --workdir /tmp/toy

`--config FILE[:ARG]` names the recipe (ARG is its variant, e.g. configs/ms1m.py:poly); each
`--config.KEY=VALUE` then overrides one key of it, typed like the value it replaces (numbers,
true/false, strings, tuples as `a,b` or `(1, 2)`); a key that configs/base.py does not declare is
an error. Starting the same command again resumes from the workdir's latest checkpoint. SIGTERM or
Ctrl-C saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from absl import app, logging

from arcface_jax import commands
from arcface_jax.config_files import (
  ConfigOverrideError,
  RecipeOptionError,
  load_config_with_overrides,
  split_config_overrides,
)


def _usage_error(message: str) -> None:
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(2)


def config_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
  """The parser of a command that takes --config (with --config.KEY=VALUE) and --workdir."""
  parser = commands.parser(module, doc)
  parser.add_argument(
    '--config',
    required=True,
    metavar='FILE[:ARG]',
    help='recipe file, e.g. configs/ms1m.py or configs/ms1m.py:poly; then any '
    '--config.KEY=VALUE overrides, e.g. --config.train.learning_rate=0.05',
  )
  parser.add_argument(
    '--workdir', required=True, help='directory for checkpoints, logs and the config'
  )
  return parser


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
  """argv[1:] parsed by `parser`, with `args.config` the loaded recipe, overrides applied.

  A missing file, an unknown variant, key or a value of the wrong type: one line, exit 2."""
  try:
    rest, overrides = split_config_overrides(argv[1:])
  except ConfigOverrideError as e:
    _usage_error(str(e))
  args = parser.parse_args(rest)
  try:
    args.config = load_config_with_overrides(args.config, overrides)
  except (ConfigOverrideError, RecipeOptionError, FileNotFoundError) as e:
    _usage_error(str(e))
  except (ValueError, KeyError, TypeError) as e:  # a recipe's own check of its argument
    _usage_error(f'{args.config}: {e}')
  return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  return parse_config_args(config_parser('arcface_jax.train', __doc__), argv)


def main(args: argparse.Namespace) -> None:
  # Imported here so that `--help` and argument errors do not pay for importing JAX.
  from arcface_jax import background_compile, distributed, trainer
  from arcface_jax.checkpoint_reading import CheckpointError
  from arcface_jax.data.errors import DatasetError
  from arcface_jax.workdir_lock import WorkdirLockedError
  from arcface_jax.write_errors import WorkdirWriteError

  distributed.initialize_if_launched()
  try:
    trainer.train_and_evaluate(args.config, args.workdir)
    # Stopped by a signal while the step compiled: exit now, not once XLA has finished.
    background_compile.exit_now_if_abandoned(0)
  except (
    trainer.ConfigError,
    trainer.TrainingDivergedError,
    DatasetError,
    FileNotFoundError,
    CheckpointError,
    WorkdirLockedError,
    WorkdirWriteError,
  ) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
