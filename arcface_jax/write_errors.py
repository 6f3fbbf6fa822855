"""A failed write into a run's workdir (disk full, quota, read-only) as one clear error.

Checkpoint libraries wrap the OSError of a background write in their own exceptions, and every
later call re-raises it; the trainer turns the first one into a `WorkdirWriteError` that says what
was being written, why the write failed and what was kept, and skips the writes that would fail
the same way.
"""
from __future__ import annotations

import errno
import os


class WorkdirWriteError(RuntimeError):
  """Writing a run's files failed; the message names the file, the cause and what is kept."""


def os_error_in(error: BaseException | None) -> OSError | None:
  """The OSError behind `error` (itself, or in its cause/context chain), if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error
    error = error.__cause__ or error.__context__
  return None


def is_out_of_space(error: BaseException) -> bool:
  """Whether `error` comes from a full disk or an exhausted quota."""
  os_error = os_error_in(error)
  return os_error is not None and os_error.errno in (errno.ENOSPC, errno.EDQUOT)


def _cause(error: OSError) -> str:
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    return 'the disk is full'
  if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return 'the location is not writable'
  return os.strerror(error.errno) if error.errno else str(error)


def describe(error: BaseException, what: str, *, kept: str = '') -> WorkdirWriteError:
  """A WorkdirWriteError for `error` raised while writing `what` (e.g. 'the checkpoint of step 6').

  Errors that are not failed writes (no OSError behind them) are returned unchanged by callers
  checking `os_error_in` first.
  """
  os_error = os_error_in(error)
  cause = _cause(os_error) if os_error is not None else str(error)
  where = f' ({os_error.filename})' if os_error is not None and os_error.filename else ''
  detail = f' [{os_error.strerror}]' if os_error is not None and os_error.strerror else ''
  message = f'could not write {what}{where}: {cause}{detail}.'
  if kept:
    message += f' {kept}'
  full = os_error is not None and os_error.errno in (errno.ENOSPC, errno.EDQUOT)
  fix = ('free some space (or pass a --workdir on a disk with room)' if full
         else 'make the workdir writable (or pass another --workdir)')
  message += f' To continue, {fix} and start the same command again.'
  return WorkdirWriteError(message)
