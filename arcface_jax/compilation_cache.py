"""JAX's persistent compilation cache for a run or a search: turning it on for a workdir (every
program cached), and counting the programs XLA compiles and those the cache serves."""

from __future__ import annotations

import logging as logging_std
import os
import re

from etils import epath

from arcface_jax import paths


class CompileCounter(logging_std.Handler):
  """Counts the programs XLA compiles and those the persistent cache serves, by name."""

  _HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")
  _MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)'")

  def __init__(self) -> None:
    super().__init__(logging_std.DEBUG)
    self.compiled: list[str] = []
    self.loaded: list[str] = []

  def emit(self, record: logging_std.LogRecord) -> None:
    message = record.getMessage()
    for pattern, into in ((self._HIT, self.loaded), (self._MISS, self.compiled)):
      match = pattern.search(message)
      if match:
        into.append(match.group(1))

  def __enter__(self) -> 'CompileCounter':
    self._logger = logging_std.getLogger('jax._src.compiler')
    self._saved = (self._logger.level, self._logger.propagate)
    self._logger.setLevel(logging_std.DEBUG)
    self._logger.propagate = False  # its DEBUG lines would flood the console
    self._logger.addHandler(self)
    return self

  def __exit__(self, *exc) -> None:
    self._logger.removeHandler(self)
    self._logger.setLevel(self._saved[0])
    self._logger.propagate = self._saved[1]


def enable_compilation_cache(workdir: paths.PathLike) -> str:
  """JAX's persistent compilation cache (kept if already configured), caching every program.

  JAX reads and writes the cache through etils.epath, so a gs:// workdir holds it too.
  """
  import jax

  # `values` is the typed way to read an option (the attribute form is dynamic)
  configured = jax.config.values['jax_compilation_cache_dir']
  directory = configured or os.fspath(epath.Path(workdir) / '.jax_cache')
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory
