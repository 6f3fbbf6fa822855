"""One training process per workdir: a lock file naming its holder.

Two runs on one workdir would interleave checkpoints, overwrite each other's config.json and mix
their TensorBoard curves without a word. The trainer therefore holds `<workdir>/train.lock` for
the whole run: an exclusive `flock` on the file (released by the kernel when the process dies,
however it dies) and, inside it, the holder's pid, host and start time for the message a second
start gets. The file is removed on a clean exit.

A lock file left by a process that died is stale: when the flock is free and the recorded pid no
longer runs on this host, the lock is taken over with a warning. A lock recorded by another host
cannot be checked from here; the message then says which file to delete if that run is gone.

In a multi-process job only process 0 takes the lock (all processes of one job share the
workdir); `hold` tells every process the outcome, so the whole job stops together.

A workdir on an object store (`gs://...`) has no flock: the lock there is the same file, written
and read through `etils.epath`. A holder on this host is checked by its pid as above; exclusivity
is best-effort (two starts within the same moment can both pass: the later upload wins, and the
earlier one notices only if it reads the file back in time), so the trainer warns about it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator

from absl import logging
from etils import epath

from arcface_jax import paths

LOCK_FILE = 'train.lock'


class WorkdirLockedError(RuntimeError):
  """Another live process trains in this workdir; the message names it."""


@dataclasses.dataclass(frozen=True)
class Holder:
  pid: int
  host: str
  started: str
  command: str = ''

  def describe(self) -> str:
    return f'pid {self.pid} on host {self.host}, started {self.started}' + (
      f' ({self.command})' if self.command else ''
    )


def lock_path(workdir: paths.PathLike) -> epath.Path:
  return paths.resolve(workdir) / LOCK_FILE


def _me() -> Holder:
  return Holder(
    pid=os.getpid(),
    host=socket.gethostname(),
    started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
    command=' '.join(sys.argv)[:200],
  )


def _parse_holder(data: bytes) -> Holder:
  fields = json.loads(data.decode())
  return Holder(
    pid=int(fields['pid']),
    host=str(fields['host']),
    started=str(fields['started']),
    command=str(fields.get('command', '')),
  )


def _read_holder(fd: int) -> Holder | None:
  try:
    return _parse_holder(os.pread(fd, 1 << 16, 0))
  except (OSError, ValueError, KeyError, TypeError):
    return None  # empty (being written, or released) or unreadable


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _read_remote_holder(path: epath.Path) -> Holder | None:
  try:
    return _parse_holder(path.read_bytes())
  except (OSError, ValueError, KeyError, TypeError):
    return None  # absent, or unreadable as the local lock's empty file is


def _in_use(path: epath.Path, who: str) -> WorkdirLockedError:
  return WorkdirLockedError(
    f'{path.parent} is in use by {who}: two runs in one workdir would mix '
    'their checkpoints, config.json and TensorBoard logs. Wait for it to finish, stop '
    'it, or pass another --workdir.'
  )


class WorkdirLock:
  """`acquire()` / `release()` (or a `with` block) of `<workdir>/train.lock`."""

  def __init__(self, workdir: paths.PathLike):
    self.path = lock_path(workdir)
    self._fd: int | None = None
    self._remote_record: bytes | None = None  # what we wrote into a remote lock file

  def acquire(self) -> None:
    if paths.is_remote(self.path):
      self._acquire_remote()
      return
    for _ in range(5):  # retries only when a releasing holder removed the file under us
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        who = holder.describe() if holder else 'another process (it is still starting)'
        raise _in_use(self.path, who) from None
      try:
        same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same_file = False
      if not same_file:
        os.close(fd)
        continue
      try:
        self._take_over(fd)
      except BaseException:
        os.close(fd)
        raise
      self._fd = fd
      return
    raise WorkdirLockedError(f'could not lock {self.path}: it keeps being replaced')

  def _take_over(self, fd: int) -> None:
    """The flock is ours; check what the file says about an earlier holder, then write ours."""
    previous = _read_holder(fd)
    me = _me()
    if previous is not None:
      self._check_other_host(previous, me)
      # The kernel drops a flock when its process dies: a free flock means the recorded process
      # is gone (or its pid has been reused by an unrelated process).
      state = 'no longer runs' if not _pid_alive(previous.pid) else 'no longer holds it'
      logging.warning(
        '%s: taking over a stale lock of %s, which %s', self.path, previous.describe(), state
      )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(dataclasses.asdict(me)).encode(), 0)
    os.fsync(fd)

  def _check_other_host(self, previous: Holder, me: Holder) -> None:
    if previous.host != me.host:
      raise WorkdirLockedError(
        f'{self.path} says {previous.describe()} trains in this workdir; that host cannot be '
        f'checked from {me.host}. If that run has stopped, delete {self.path} and start '
        'again; otherwise pass another --workdir.'
      )

  def _acquire_remote(self) -> None:
    """The lock file on an object store: no flock, so the recorded pid decides (best-effort)."""
    logging.warning(
      '%s is on an object store, which has no file locks: the workdir lock is '
      'best-effort there (two starts at the same moment are not told apart); '
      'start one training job per workdir',
      self.path,
    )
    previous = _read_remote_holder(self.path)
    me = _me()
    if previous is not None:
      self._check_other_host(previous, me)
      if previous.pid != me.pid and _pid_alive(previous.pid):
        raise _in_use(self.path, previous.describe())
      logging.warning(
        '%s: taking over a stale lock of %s, which no longer runs', self.path, previous.describe()
      )
    record = json.dumps(dataclasses.asdict(me)).encode()
    self.path.write_bytes(record)
    if self.path.read_bytes() != record:  # another start wrote after us: it has the lock
      raise _in_use(self.path, (_read_remote_holder(self.path) or me).describe())
    self._remote_record = record

  def release(self) -> None:
    if self._remote_record is not None:
      try:
        if self.path.read_bytes() == self._remote_record:
          self.path.unlink()
      except OSError:
        pass
      self._remote_record = None
      return
    if self._fd is None:
      return
    try:
      if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
        os.unlink(self.path)  # while still holding the flock, so no one else has it yet
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def live_holder(workdir: paths.PathLike) -> Holder | None:
  """The process holding the workdir's lock now, or None (no lock, or a stale one)."""
  if paths.is_remote(workdir):
    holder = _read_remote_holder(lock_path(workdir))
    if holder is None or (holder.host == socket.gethostname() and not _pid_alive(holder.pid)):
      return None
    return holder
  try:
    fd = os.open(lock_path(workdir), os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
      return _read_holder(fd) or Holder(pid=-1, host='?', started='?')
    fcntl.flock(fd, fcntl.LOCK_UN)
    holder = _read_holder(fd)
    if holder is not None and holder.host != socket.gethostname():
      return holder  # cannot be checked from here: assume it runs
    return None
  finally:
    os.close(fd)


@contextlib.contextmanager
def hold(workdir: paths.PathLike) -> Iterator[None]:
  """The lock for one (possibly multi-process) training job; every process raises alike."""
  import jax  # here, so that the lock itself is usable without JAX

  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error: WorkdirLockedError | None = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = WorkdirLockedError(
        f'process 0 could not lock {lock_path(workdir)}; its log names the process that holds it'
      )
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
