"""Checkpoints: periodic, asynchronous, keep-N, and on preemption (SIGTERM/SIGINT).

A checkpoint has two items so that evaluation reads only what it needs:
  model: {'params', 'batch_stats'} of the backbone (all an embedder needs);
  train: the class centres, objective state, optimizer state and step counters.
The data iterator's position is the step itself: the input pipeline's order is a pure function of
(seed, step), so restoring the step restores the position exactly.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from arcface_jax.train_step import TrainState

MODEL_ITEM = 'model'
TRAIN_ITEM = 'train'


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _split(state: TrainState) -> dict[str, Any]:
  model = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
  train = {'head': state.params['head'], 'head_state': state.head_state,
           'opt_state': state.opt_state, 'step': state.step,
           'skipped_steps': state.skipped_steps, 'consecutive_skips': state.consecutive_skips}
  return {MODEL_ITEM: model, TRAIN_ITEM: train}


def _join(items: dict[str, Any]) -> TrainState:
  model, train = items[MODEL_ITEM], items[TRAIN_ITEM]
  return TrainState(step=train['step'],
                    params={'backbone': model['params'], 'head': train['head']},
                    batch_stats=model['batch_stats'], head_state=train['head_state'],
                    opt_state=train['opt_state'], skipped_steps=train['skipped_steps'],
                    consecutive_skips=train['consecutive_skips'])


class Checkpointer:
  """Thin policy layer over orbax's CheckpointManager for TrainState."""

  def __init__(self, workdir: str, *, save_every: int = 0, keep: int = 3,
               asynchronous: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(save_every, 1),
        enable_async_checkpointing=asynchronous, create=True)
    self._save_every = save_every
    self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                         item_names=(MODEL_ITEM, TRAIN_ITEM))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, *, step: int | None = None, force: bool = False) -> bool:
    """Saves when the policy says so (every `save_every` steps) or when forced.

    Pass the host's `step` in the training loop: reading `state.step` would wait for the device
    and stall the asynchronous dispatch of every step.
    """
    if step is None:
      step = int(jax.device_get(state.step))
    if not force and (self._save_every <= 0 or step % self._save_every):
      return False
    if step in self.manager.all_steps():
      return False
    items = _split(state)
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
    return self.manager.save(step, args=args, force=True)

  def restore(self, abstract_state: TrainState, step: int | None = None) -> TrainState:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs).

    Because the target carries shardings, a checkpoint written on one device count restores onto
    another.
    """
    step = self.latest_step() if step is None else step
    items = _split(abstract_state)
    args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in items.items()})
    return _join(self.manager.restore(step, args=args))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_model_variables(workdir: str, abstract_variables: Any,
                            step: int | None = None) -> tuple[Any, int]:
  """Only the backbone variables of a checkpoint (latest by default), and the step they are from."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=(MODEL_ITEM, TRAIN_ITEM))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}: train first, or '
                              'pass the --workdir of a run that saved one')
    if step not in manager.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {checkpoint_dir(workdir)}; '
                              f'available steps: {list(manager.all_steps())}')
    restored = manager.restore(step, args=ocp.args.Composite(
        **{MODEL_ITEM: ocp.args.StandardRestore(abstract_variables)}))
    return restored[MODEL_ITEM], step
  finally:
    manager.close()


class PreemptionFlag:
  """Set by SIGTERM/SIGINT; the loop checks it at step boundaries, saves, and exits cleanly.

  The handler only sets a flag: saving inside a signal handler could interrupt a save in progress.
  A second signal restores the default handler, so a user who insists still stops the process.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> 'PreemptionFlag':
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    self._event.set()
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def set(self) -> None:
    self._event.set()

  @property
  def is_set(self) -> bool:
    return self._event.is_set()
