"""Checkpoints: periodic, asynchronous, keep-N, and on preemption (SIGTERM/SIGINT).

A checkpoint has two items so that evaluation reads only what it needs:
  model: {'params', 'batch_stats'} of the backbone (all an embedder needs);
  train: the class centres, objective state, optimizer state and step counters.
The data iterator's position is the step itself: the input pipeline's order is a pure function of
(seed, step), so restoring the step restores the position exactly.

Only sound states are saved (finite, nothing blown up: `state_health`), each finished step gets
a checksum file, and a restore takes the newest step that verifies, reads and is sound, setting
damaged ones aside (`checkpoint_integrity`). A failed write (disk full) is one
`WorkdirWriteError`; the earlier checkpoints stay as they are.

This module holds the trainer's side (`Checkpointer`: save, restore a TrainState, set aside);
the layout and the backbone-only restore that loading a model needs are in `checkpoint_reading`,
the SIGTERM/SIGINT flag in `preemption`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from arcface_jax import checkpoint_integrity as integrity
from arcface_jax import paths, state_health, write_errors
from arcface_jax.checkpoint_integrity import Damage

# The layout, the backbone-only restore and the set-aside live in checkpoint_reading (loading a
# model needs no train state), the signal flag in preemption; all stay importable from here.
from arcface_jax.checkpoint_reading import (
  MODEL_ITEM,
  READ_ERRORS,
  TRAIN_ITEM,
  CheckpointError,
  checkpoint_dir,
  first_line,
  report_and_set_aside,
  restore_model_variables,
)
from arcface_jax.preemption import PreemptionFlag
from arcface_jax.train_state import TrainState

__all__ = [
  'MODEL_ITEM',
  'TRAIN_ITEM',
  'CheckpointError',
  'Checkpointer',
  'PreemptionFlag',
  'UnsoundStateError',
  'checkpoint_dir',
  'kept_message',
  'restore_model_variables',
]


class UnsoundStateError(CheckpointError):
  """A state that is not finite or has blown up was not saved."""

  def __init__(self, step: int, problems: list[str]):
    super().__init__(f'the state at step {step} was not saved: {"; ".join(problems)}')
    self.step = step
    self.problems = problems


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _split(state: TrainState) -> dict[str, Any]:
  model = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
  train = {
    'head': state.params['head'],
    'head_state': state.head_state,
    'opt_state': state.opt_state,
    'step': state.step,
    'skipped_steps': state.skipped_steps,
    'consecutive_skips': state.consecutive_skips,
  }
  return {MODEL_ITEM: model, TRAIN_ITEM: train}


def _join(items: dict[str, Any]) -> TrainState:
  model, train = items[MODEL_ITEM], items[TRAIN_ITEM]
  return TrainState(
    step=train['step'],
    params={'backbone': model['params'], 'head': train['head']},
    batch_stats=model['batch_stats'],
    head_state=train['head_state'],
    opt_state=train['opt_state'],
    skipped_steps=train['skipped_steps'],
    consecutive_skips=train['consecutive_skips'],
  )


class Checkpointer:
  """Policy over orbax's CheckpointManager for TrainState: when to save, what to trust."""

  def __init__(
    self, workdir: paths.PathLike, *, save_every: int = 0, keep: int = 3, asynchronous: bool = True
  ):
    if keep < 1:
      raise ValueError(f'keep={keep}: at least one checkpoint must be kept')
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=max(save_every, 1),
      enable_async_checkpointing=asynchronous,
      create=True,
      cleanup_tmp_directories=True,
    )
    self.workdir = workdir
    self.directory = checkpoint_dir(workdir)
    self._save_every = save_every
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=(MODEL_ITEM, TRAIN_ITEM)
    )
    self._sums_thread: threading.Thread | None = None
    self._sums_error: BaseException | None = None
    self._failed = False

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    return self._save_every > 0 and step % self._save_every == 0

  def save(self, state: TrainState, *, step: int | None = None, force: bool = False) -> bool:
    """Saves when the policy says so (every `save_every` steps) or when forced.

    Pass the host's `step` in the training loop: reading `state.step` would wait for the device
    and stall the asynchronous dispatch of every step. A state that is not sound is not saved:
    UnsoundStateError. A failed write (disk full) raises WorkdirWriteError.
    """
    if step is None:
      step = int(jax.device_get(state.step))
    if not force and not self.due(step):
      return False
    if self._failed or step in self.manager.all_steps():
      return False
    problems = state_health.train_state_problems(state)
    if problems:
      raise UnsoundStateError(step, problems)
    items = _split(state)
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
    with self._write_errors('a checkpoint'):  # the error may be the previous (async) save's
      self._finish_sums()
      saved = self.manager.save(step, args=args, force=True)
    if saved and jax.process_index() == 0:
      self._sums_thread = threading.Thread(
        target=self._write_sums_when_final, args=(step,), name=f'checksums-{step}', daemon=True
      )
      self._sums_thread.start()
    return saved

  def _write_sums_when_final(self, step: int) -> None:
    """Checksums once orbax has finalised `step` (its directory renamed into place)."""
    try:
      while self.manager.is_saving_in_progress():
        time.sleep(0.05)
      if self.step_dir(step).is_dir():  # absent when the save failed
        integrity.write_sums(self.step_dir(step))
    except BaseException as e:  # pylint: disable=broad-except  # re-raised on the main thread
      if self.step_dir(step).is_dir():
        self._sums_error = e

  def _finish_sums(self) -> None:
    if self._sums_thread is not None:
      self._sums_thread.join()
      self._sums_thread = None
    if self._sums_error is not None:
      error, self._sums_error = self._sums_error, None
      raise error

  @contextlib.contextmanager
  def _write_errors(self, what: str) -> Iterator[None]:
    """A failed write (disk full) becomes one WorkdirWriteError; later saves are skipped."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # orbax wraps the OSError variously
      if write_errors.failed_write(e) is None:
        raise
      self._failed = True  # later saves would fail alike, and close() must not report it again
      raise write_errors.describe(e, what, kept=self.kept_message()) from None

  def kept_message(self) -> str:
    return kept_message(self.workdir)

  def restore(self, abstract_state: TrainState, step: int | None = None) -> TrainState:
    """Restores `step` (latest by default) onto the shardings carried by `abstract_state`.

    Because the target carries shardings, a checkpoint written on one device count restores onto
    another. No integrity checks: `restore_latest` is the careful entry point.
    """
    step = self.latest_step() if step is None else step
    items = _split(abstract_state)
    args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in items.items()})
    return _join(self.manager.restore(step, args=args))

  def restore_latest(self, abstract_state: TrainState) -> TrainState | None:
    """The newest checkpoint that is intact, readable and sound, or None when there is none.

    Each one that fails is set aside (`checkpoint_integrity.set_aside`) with a warning naming
    the step and the damage. An intact checkpoint that does not fit `abstract_state` (the config
    changed) is a CheckpointError: setting it aside would only hide the mistake.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      step_dir = self.step_dir(step)
      damage = integrity.verify(step_dir)
      if damage is None:
        verified = integrity.has_sums(step_dir)
        if not verified:
          logging.warning(
            'checkpoint step %d has no %s (the process stopped before it was '
            'written, or an older version saved it): restoring it unverified',
            step,
            integrity.SUMS_FILE,
          )
        try:
          state = self.restore(abstract_state, step)
        except READ_ERRORS as e:
          if verified:
            raise CheckpointError(
              f'checkpoint step {step} in {self.directory} is intact but does not fit this '
              f'run\'s config ({first_line(e)}). Resume with the config it was trained with '
              f'({paths.resolve(self.workdir) / "config.json"}) or use a new --workdir.'
            ) from None
          damage = Damage('unreadable', f'orbax cannot read it: {first_line(e)}')
        else:
          problems = state_health.train_state_problems(state)
          if not problems:
            return state
          damage = Damage(
            'unsound',
            'it holds a diverged state, which would fail again at once: ' + '; '.join(problems),
          )
      self.set_aside(step, damage)
    return None

  def set_aside(self, step: int, damage: Damage) -> None:
    """Moves a finished step out of the checkpoints (see `checkpoint_integrity.set_aside`)."""
    report_and_set_aside(self.workdir, step, damage, move=True)
    _sync(f'checkpoint-set-aside-{step}')
    self.manager.reload()

  def wait(self) -> None:
    with self._write_errors('a checkpoint'):
      self.manager.wait_until_finished()
      self._finish_sums()

  def close(self) -> None:
    """Waits for the last save and its checksums; after a failed write, only cleans up."""
    if self._failed:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  # the failure was already reported
        pass
      return
    try:
      self.wait()
    finally:
      self.manager.close()


def kept_message(workdir: paths.PathLike) -> str:
  """What survives a failed write: the finished checkpoints of `workdir`."""
  directory = checkpoint_dir(workdir)
  try:
    steps = sorted(int(child.name) for child in directory.iterdir() if child.name.isdigit())
  except OSError:  # no checkpoints directory yet
    steps = []
  if not steps:
    return 'No checkpoint had been saved yet.'
  return (
    f'The finished checkpoints in {directory} are kept (newest: step {steps[-1]}); an '
    'unfinished one is removed on the next start.'
  )
