"""Compiling a program on a background thread, so that a stop signal is honoured meanwhile.

XLA cannot interrupt a compilation, and a Python signal handler only runs once the main thread is
back in Python: a SIGTERM that arrives during a minutes-long first compile would otherwise be seen
only after it. Here the main thread waits on the compiling thread in short slices, checking the
stop flag between them, and abandons the compilation when it is set.

An abandoned compilation keeps its daemon thread busy until XLA is done. Interpreter shutdown
with it still running would wait in JAX's exit hook and then abort (the thread is unwound inside
C++), so an exit hook waits for it instead: the exit status stays right, the exit is late. A
command-line entry point, which knows its exit status, calls `exit_now_if_abandoned(status)` to
end the process at once instead (`os._exit` after flushing the logs and streams).
"""

from __future__ import annotations

import atexit
import logging as logging_std
import os
import sys
import threading
import time
from typing import Any, Callable

from absl import logging

_POLL_S = 0.1
_abandoned: list[threading.Thread] = []


class BackgroundCompile:
  """`compile_fn()` (e.g. `jitted.lower(...).compile()`) running on a daemon thread."""

  def __init__(self, compile_fn: Callable[[], Any], what: str):
    self.what = what
    self._done = threading.Event()
    self._result: Any = None
    self._error: BaseException | None = None
    self._started = time.perf_counter()

    def run() -> None:
      try:
        self._result = compile_fn()
      except BaseException as e:  # pylint: disable=broad-except  # re-raised by `wait`
        self._error = e
      finally:
        self._done.set()

    self._thread = threading.Thread(target=run, name=f'compile {what}', daemon=True)
    self._thread.start()

  @property
  def seconds(self) -> float:
    return time.perf_counter() - self._started

  def wait(self, stop_requested: Callable[[], bool], *, report_every_s: float = 60.0) -> Any:
    """The compiled program, or None when `stop_requested()` became true first.

    Says every `report_every_s` that the compilation goes on, so a long first compile does not
    look like a hang. A failed compilation re-raises its error here.
    """
    next_report = report_every_s
    while not self._done.wait(_POLL_S):
      if stop_requested():
        self._abandon()
        return None
      if self.seconds >= next_report:
        logging.info('still compiling %s (%.0f s so far)', self.what, self.seconds)
        next_report += report_every_s
    if self._error is not None:
      raise self._error
    return self._result

  def _abandon(self) -> None:
    if not _abandoned:
      atexit.register(_wait_for_abandoned)  # registered after JAX's hooks: runs before them
    _abandoned.append(self._thread)


def _still_compiling() -> list[threading.Thread]:
  return [thread for thread in _abandoned if thread.is_alive()]


def _wait_for_abandoned() -> None:
  if _still_compiling():
    logging.info('waiting for an abandoned compilation to finish before exiting')
  for thread in _still_compiling():
    thread.join()


def exit_now_if_abandoned(status: int) -> None:
  """Ends the process now with `status` when an abandoned compilation still runs (else returns)."""
  if not _still_compiling():
    return
  logging_std.shutdown()  # flushes absl's handlers too
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(status)  # pylint: disable=protected-access
