"""Stopping a diverging run without saving, or resuming from, the state that diverged.

A step with a non-finite loss, gradients or batch statistics is skipped in the step itself
(`train_step`); here the loop stops when too many are skipped in a row, or when the state has blown
up while the loss stayed finite (`state_health`), and says what to do. Only sound states are
checkpointed, and a checkpoint is only known good once the step after it was finite: on
divergence the checkpoints the failing steps started from are set aside, so the next start resumes
from one that trained.
"""

from __future__ import annotations

import jax
import ml_collections

from arcface_jax import state_health
from arcface_jax.checkpoint_integrity import Damage
from arcface_jax.checkpointing import Checkpointer, UnsoundStateError
from arcface_jax.train_state import TrainState


class TrainingDivergedError(RuntimeError):
  """Non-finite steps in a row, or a blown-up state; only earlier, sound states are saved."""


class DivergenceCheck:
  """Stops a diverging run, saves only sound states, and says whether to blame the checkpoint.

  A skipped step's loss and gradients do not depend on the learning rate of that step, so when
  every step since a resume was non-finite, the restored state is the cause, not the learning
  rate. Nothing is saved on divergence: the state then is the one that keeps failing.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, checkpointer: Checkpointer, first_step: int
  ):
    self.config, self.checkpointer, self.first_step = config, checkpointer, first_step

  def check(self, state: TrainState, step: int) -> None:
    consecutive = int(jax.device_get(state.consecutive_skips))
    if consecutive > self.config.train.max_consecutive_bad_steps:
      raise self._error(step, consecutive=consecutive)
    problems = state_health.train_state_problems(state)
    if problems:
      raise self._error(step, problems=problems)

  def save(self, state: TrainState, step: int, *, force: bool = False) -> None:
    try:
      self.checkpointer.save(state, step=step, force=force)
    except UnsoundStateError as e:
      raise self._error(step, problems=e.problems) from None

  def _error(
    self, step: int, *, consecutive: int = 0, problems: list[str] | None = None
  ) -> TrainingDivergedError:
    self.checkpointer.wait()
    if consecutive:
      self._set_aside_failing(first_bad=step - consecutive + 1, last_bad=step)
    newest = self.checkpointer.latest_step()
    resumes = (
      f'the next start resumes from step {newest}'
      if newest is not None
      else 'the next start begins afresh'
    )
    if consecutive and self.first_step > 0 and consecutive >= step - self.first_step:
      return TrainingDivergedError(
        f'every step since resuming from checkpoint step {self.first_step} ({consecutive} '
        'steps) had a non-finite loss, gradients or batch statistics: the restored state itself is '
        'the cause, not config.train.learning_rate (a step\'s forward and backward pass do '
        'not depend on it). '
        f'That checkpoint is set aside; {resumes}.'
      )
    if consecutive:
      what = (
        f'the loss, gradients or batch statistics were not finite for {consecutive} '
        f'consecutive steps (up to step {step})'
      )
    else:
      what = f'the state blew up by step {step} ({"; ".join(problems or [])})'
    kept = (
      f'the newest sound checkpoint is step {newest}, where the next start resumes'
      if newest is not None
      else 'no sound checkpoint is left, so the next start begins afresh'
    )
    return TrainingDivergedError(
      f'{what}; nothing later is saved: {kept}. Lower config.train.learning_rate (now '
      f'{self.config.train.learning_rate:g}) or check the data, then start again.'
    )

  def _set_aside_failing(self, first_bad: int, last_bad: int) -> None:
    """The checkpoint of step S is the state step S + 1 starts from: those from `first_bad - 1`
    on gave only non-finite steps, so resuming from them would fail again at once."""
    for saved in sorted(self.checkpointer.manager.all_steps()):
      if saved >= first_bad - 1:
        self.checkpointer.set_aside(
          saved,
          Damage(
            'diverged',
            f'training from it gave non-finite values at every step from {first_bad} to {last_bad}',
          ),
        )
