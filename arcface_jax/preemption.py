"""Stopping a training run cleanly: `PreemptionFlag`, set by SIGTERM/SIGINT and checked by the loop
at step boundaries, which then saves a checkpoint and exits."""

from __future__ import annotations

import signal
import threading
from typing import Any


class PreemptionFlag:
  """Set by SIGTERM/SIGINT; the loop checks it at step boundaries, saves, and exits cleanly.

  The handler only sets a flag: saving inside a signal handler could interrupt a save in progress.
  A second signal restores the default handler, so a user who insists still stops the process.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self) -> None:
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
