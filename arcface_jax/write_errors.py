"""A failed write into a run's workdir (disk full, quota, read-only) as one clear error.

Python's own writes raise OSError; orbax's background writes go through tensorstore, whose error
is a ValueError whose text carries the OS error code ("... No space left on device
[os_error_code='28']"), re-raised by every later call into the checkpoint manager. `failed_write`
finds the errno behind either; the trainer turns the first such error into a `WorkdirWriteError`
that says what was being written, why it failed and what was kept.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_FILE_IN_MESSAGE = re.compile(r'(?:Failed writing|Error writing[^:]*at local file): "([^"]+)"')
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class WorkdirWriteError(RuntimeError):
  """Writing a run's files failed; the message names the file, the cause and what is kept."""


@dataclasses.dataclass(frozen=True)
class FailedWrite:
  errno: int
  filename: str | None


def failed_write(error: BaseException | None) -> FailedWrite | None:
  """The OS error behind `error` (itself or its cause/context chain), or None if there is none."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return FailedWrite(error.errno, error.filename)
    code = _OS_ERROR_CODE.search(str(error))
    if code is not None:
      path = _FILE_IN_MESSAGE.search(str(error))
      return FailedWrite(int(code.group(1)), path.group(1) if path else None)
    error = error.__cause__ or error.__context__
  return None


def is_out_of_space(error: BaseException) -> bool:
  """Whether `error` comes from a full disk or an exhausted quota."""
  found = failed_write(error)
  return found is not None and found.errno in OUT_OF_SPACE


def describe(error: BaseException, what: str, *, kept: str = '') -> WorkdirWriteError:
  """A WorkdirWriteError for `error`, raised while writing `what` (e.g. 'into runs/x')."""
  found = failed_write(error)
  if found is None:
    return WorkdirWriteError(f'could not write {what}: {error}. {kept}'.strip())
  full = found.errno in OUT_OF_SPACE
  cause = 'the disk is full' if full else os.strerror(found.errno)
  where = f' ({found.filename})' if found.filename else ''
  fix = (
    'free some space (or pass a --workdir on a disk with room)'
    if full
    else 'make the workdir writable (or pass another --workdir)'
  )
  message = f'could not write {what}{where}: {cause}.'
  if kept:
    message += f' {kept}'
  return WorkdirWriteError(f'{message} To continue, {fix} and start the same command again.')
