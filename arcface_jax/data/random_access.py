"""`RandomAccessFile`: positioned reads (`pread`) of a local file or an object-store URI.

A RecordIO reader fetches one record at a known offset from many threads, and pickles into
grain's worker processes. Locally that is `os.pread` on a descriptor opened lazily in each
process: no seek, so one descriptor serves every thread. A URI (`gs://...`) has no descriptor:
each thread opens its own `epath.Path.open('rb')` stream (a shared one would need a lock around
seek + read, serialising the threads' network round trips) and seeks before each read.

fsspec's buffered files (gcsfs, what epath uses for gs:// without TensorFlow) read ahead a whole
block (5 MB for gcsfs) on every miss: right for streaming a file, but a record of a few KB at a
random offset would then cost a 5 MB download. Their cache is switched to fsspec's 'none' cache,
so that each read is one ranged request for exactly the bytes asked for.
"""

from __future__ import annotations

import os
import threading
from typing import IO, Any

from etils import epath

from arcface_jax import paths


class RandomAccessFile:
  """`pread(size, offset)` on `path`, safe across threads, forks and pickling."""

  def __init__(self, path: paths.PathLike):
    self.path = os.fspath(path)
    self.remote = paths.is_remote(self.path)
    self._fd: int | None = None
    self._pid = -1
    self._reset_streams()

  def _reset_streams(self) -> None:
    self._lock = threading.Lock()
    self._local = threading.local()  # this thread's stream of a remote file
    self._streams: list[IO[bytes]] = []  # every thread's, to close them all

  def size(self) -> int:
    """Bytes in the file; OSError when it cannot be read."""
    if self.remote:
      return int(epath.Path(self.path).stat().length)
    return os.path.getsize(self.path)

  def open(self) -> None:
    """Opens this process's descriptor (or this thread's stream) now: OSError if unreadable."""
    self._stream() if self.remote else self._descriptor()

  def _descriptor(self) -> int:
    if self._fd is None or self._pid != os.getpid():
      with self._lock:  # reader threads of a fresh process would otherwise each open one
        if self._fd is not None and self._pid != os.getpid():
          # A forked child's copy of the parent's descriptor: close it and open its own.
          os.close(self._fd)
          self._fd = None
        if self._fd is None:
          self._fd = os.open(self.path, os.O_RDONLY)
          self._pid = os.getpid()
    return self._fd

  def _stream(self) -> IO[bytes]:
    if self._pid != os.getpid():  # a forked child must not share the parent's connections
      with self._lock:
        if self._pid != os.getpid():
          self._local = threading.local()
          self._streams = []
          self._pid = os.getpid()
    stream = getattr(self._local, 'stream', None)
    if stream is None:
      stream = no_read_ahead(epath.Path(self.path).open('rb'))
      self._local.stream = stream
      with self._lock:
        self._streams.append(stream)
    return stream

  def pread(self, size: int, offset: int) -> bytes:
    """Up to `size` bytes at `offset` (fewer at the end of the file), like `os.pread`."""
    if not self.remote:
      return os.pread(self._descriptor(), size, offset)
    stream = self._stream()
    stream.seek(offset)
    return stream.read(size)

  def close(self) -> None:
    """Closes this process's descriptor and streams (a later read reopens them)."""
    if self._pid == os.getpid():
      if self._fd is not None:
        os.close(self._fd)
      with self._lock:
        for stream in self._streams:
          stream.close()
    self._fd = None
    self._pid = -1
    self._local = threading.local()
    self._streams = []

  def __getstate__(self) -> dict[str, Any]:
    # Each process opens its own descriptor or streams; locks and thread-locals do not pickle.
    return {'path': self.path, 'remote': self.remote}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._fd, self._pid = None, -1
    self._reset_streams()

  def __del__(self) -> None:
    try:
      self.close()
    except (AttributeError, OSError):  # __init__ failed part-way, or the stream is gone
      pass


def no_read_ahead(stream: IO[bytes]) -> IO[bytes]:
  """`stream`, reading exactly the requested ranges if it is an fsspec buffered file (see the
  module docstring); any other stream (a local file, TensorFlow's gfile) is returned as is."""
  try:
    from fsspec.caching import BaseCache
    from fsspec.spec import AbstractBufferedFile
  except ImportError:  # epath without fsspec: nothing to change
    return stream
  if isinstance(stream, AbstractBufferedFile):
    stream.cache = BaseCache(stream.blocksize, stream._fetch_range, stream.size)
  return stream
