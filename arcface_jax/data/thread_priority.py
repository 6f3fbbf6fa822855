"""Reader threads that yield the cores to the training step.

On a host without an accelerator the input pipeline's reader threads share the cores with XLA's
compute threads, and a step waits for its slowest thread: at equal priority every batch decoded
preempts the step. Made nicer, the readers take the cycles the step leaves idle (its serial
parts, the host's dispatch) and the prefetch buffer absorbs the rest. With an accelerator the
step does not run on these cores, and the lower priority only keeps the thread that dispatches
steps ahead of the readers.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable

import numpy as np

READER_NICENESS = 15  # how much nicer a reader thread runs than the thread that started it (max 19)
_this_thread = threading.local()


def lower_this_thread_priority(step: int = READER_NICENESS) -> None:
  """Make the calling thread (not its process) `step` nicer, once per thread; never the main
  thread. Linux only: there `setpriority` on a thread id affects that thread alone."""
  if (
    getattr(_this_thread, 'lowered', False) or threading.current_thread() is threading.main_thread()
  ):
    return
  _this_thread.lowered = True
  if not sys.platform.startswith('linux'):
    return
  thread_id = threading.get_native_id()
  try:
    niceness = os.getpriority(os.PRIO_PROCESS, thread_id)
    os.setpriority(os.PRIO_PROCESS, thread_id, min(19, niceness + step))
  except OSError:  # a sandbox may forbid it; the batches are the same either way
    pass


class NicerThread:
  """`make(step)`, called from a reader thread that first lowers its own priority (picklable)."""

  def __init__(self, make: Callable[[int], dict[str, np.ndarray]]):
    self.make = make

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    lower_this_thread_priority()
    return self.make(step)
