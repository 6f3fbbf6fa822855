"""Reading checkpoints without the training loop: the layout (the `model` and `train` items under
`<workdir>/checkpoints/<step>`), `CheckpointError`, the backbone-only restore that loading a model
needs (`restore_model_variables`), and damaged steps reported and set aside.

`arcface_jax.checkpointing` (the trainer's `Checkpointer`) writes what this reads and shares its
set-aside; loading a model imports only this module, never the train state.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from arcface_jax import checkpoint_integrity as integrity
from arcface_jax import paths, state_health, workdir_lock
from arcface_jax.checkpoint_integrity import Damage

MODEL_ITEM = 'model'
TRAIN_ITEM = 'train'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used or written; the message names the step and what to do."""


def checkpoint_dir(workdir: paths.PathLike) -> epath.Path:
  """`<workdir>/checkpoints`, absolute when local (orbax needs that), as given when a URI."""
  return paths.resolve(workdir) / 'checkpoints'


def first_line(error: BaseException) -> str:
  """The first non-blank line of an error's message (at most 300 characters), for one-line reports."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


# What a damaged checkpoint makes orbax/tensorstore raise on restore.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError)


def report_and_set_aside(workdir: paths.PathLike, step: int, damage: Damage, *, move: bool) -> None:
  """Warns about a damaged step and moves it aside (process 0 only), or says why it stays."""
  step_dir = checkpoint_dir(workdir) / str(step)
  if move and jax.process_index() == 0:
    try:
      target = integrity.set_aside(workdir, step_dir, step, damage)
      where = f'moved it to {target}'
    except OSError as e:
      where = f'could not move it aside ({e.strerror}); it is skipped'
  elif move:
    where = 'process 0 moves it aside'
  else:
    where = 'left in place while a training process holds the workdir'
  logging.warning(
    'checkpoint step %d in %s is damaged (%s); %s and falling back to the newest '
    'earlier checkpoint',
    step,
    checkpoint_dir(workdir),
    damage,
    where,
  )


def restore_model_variables(
  workdir: paths.PathLike, abstract_variables: Any, step: int | None = None
) -> tuple[Any, int]:
  """Only the backbone variables of a checkpoint (latest by default), and the step they are from.

  The latest step that verifies, reads and holds finite, bounded values is used; damaged ones
  are skipped with a warning and moved aside unless a training process holds the workdir. A
  given `step` that is damaged is an error. A backbone without batch norm restores with an empty
  'batch_stats', as it was saved.
  """
  abstract = dict(abstract_variables)
  abstract.setdefault('batch_stats', {})
  directory = checkpoint_dir(workdir)
  manager = ocp.CheckpointManager(directory, item_names=(MODEL_ITEM, TRAIN_ITEM))
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(
        f'no checkpoint in {directory}: train first, or pass the --workdir of a run that saved one'
      )
    if step is not None and step not in steps:
      raise FileNotFoundError(
        f'no checkpoint for step {step} in {directory}; available steps: {sorted(steps)}'
      )
    for candidate in [step] if step is not None else steps:
      variables, damage = _read_model_item(manager, directory, candidate, abstract)
      if damage is None:
        return variables, candidate
      if step is not None:
        raise CheckpointError(
          f'checkpoint step {step} in {directory} is damaged ({damage}); '
          f'choose another step ({sorted(steps)}) or leave --step out to '
          'use the newest intact one'
        )
      holder = workdir_lock.live_holder(workdir)
      report_and_set_aside(workdir, candidate, damage, move=holder is None)
    raise CheckpointError(
      f'no intact checkpoint in {directory}: every one is damaged (see the warnings above)'
    )
  finally:
    manager.close()


def _read_model_item(
  manager: ocp.CheckpointManager, directory: epath.Path, step: int, abstract: Any
) -> tuple[Any, Damage | None]:
  step_dir = directory / str(step)
  damage = integrity.verify(step_dir, items=(MODEL_ITEM,))
  if damage is not None:
    return None, damage
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.StandardRestore(abstract)})
    )
  except READ_ERRORS as e:
    if integrity.has_sums(step_dir):
      raise CheckpointError(
        f'checkpoint step {step} in {directory} is intact but its backbone '
        f'does not fit the run\'s config.json ({first_line(e)})'
      ) from None
    return None, Damage('unreadable', f'orbax cannot read it: {first_line(e)}')
  variables = restored[MODEL_ITEM]
  problems = state_health.model_variables_problems(variables)
  if problems:
    return None, Damage('unsound', 'its backbone holds a diverged state: ' + '; '.join(problems))
  return variables, None
