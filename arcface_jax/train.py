"""Trains a face-recognition model from a config file.

  python -m arcface_jax.train --config configs/ms1m.py --workdir runs/ms1m \
      [--config.train.batch_size=512 ...]

Starting the same command again resumes from the workdir's latest checkpoint. SIGTERM or Ctrl-C
saves a checkpoint and exits cleanly.
"""
from __future__ import annotations

import re
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe file, e.g. configs/ms1m.py or configs/ms1m.py:poly.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the config.')
flags.mark_flags_as_required(['config', 'workdir'])


def _first_message(error: BaseException) -> str:
  """The most specific message in an exception chain (ml_collections nests its KeyErrors)."""
  while error is not None:
    if isinstance(error, KeyError) and error.args:
      return str(error.args[0])
    error = error.__context__
  return ''


def _without_traceback(message: str) -> str:
  """ml_collections pastes a recipe's whole traceback into the flag error; keep its last line,
  the recipe's own message (e.g. `configs/synthetic.py: unknown variant 'huge'; ...`)."""
  if 'Traceback (most recent call last)' not in message:
    return message
  last = [line for line in message.splitlines() if line.strip()][-1]
  return re.sub(r'^\w+(Error|Exception): ', '', last.strip())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad config or override is one line naming it instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = _without_traceback(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    detail = (_first_message(e) or str(e)).replace('\n', ' ').rstrip('.')
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    message = (f'cannot apply the config overrides {overrides}: {detail}. Every key must exist '
               'in configs/base.py; check the spelling.')
  except OSError as e:
    message = ' '.join(str(e).split())
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Imported here so that `--help` and flag errors do not pay for importing JAX.
  from arcface_jax import background_compile, distributed, trainer
  from arcface_jax.checkpointing import CheckpointError
  from arcface_jax.data.errors import DatasetError
  from arcface_jax.workdir_lock import WorkdirLockedError
  from arcface_jax.write_errors import WorkdirWriteError

  distributed.initialize_if_launched()
  try:
    config = _CONFIG.value
    config.train  # pylint: disable=pointless-statement  # loaded lazily: fail here, once
  except OSError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(2)
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value)
    # Stopped by a signal while the step compiled: exit now, not once XLA has finished.
    background_compile.exit_now_if_abandoned(0)
  except (trainer.ConfigError, trainer.TrainingDivergedError, DatasetError, FileNotFoundError,
          CheckpointError, WorkdirLockedError, WorkdirWriteError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
