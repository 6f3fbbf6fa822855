"""JAX compilation for the faces commands: a persistent cache on disk, and a line before compiles.

A fresh process compiles every jitted program it runs (the detector's networks, the embedder) and
on a CPU that takes seconds: with the persistent cache a second run loads them from disk instead.

  enable_persistent_cache()   # on by default for the faces commands; call before the first jit

Where it lives: $ARCFACE_JAX_CACHE_DIR if set, else $XDG_CACHE_HOME/arcface_jax/jax_cache, else
~/.cache/arcface_jax/jax_cache. ARCFACE_JAX_NO_CACHE=1 turns it off. A cache the user (or a test
harness) already chose through JAX_COMPILATION_CACHE_DIR or jax.config is left as it is.

`first_seen(keys)` and `log_compile(message)`: one line before programs of new shapes first run in
this process, so a first photo that takes several seconds does not look frozen.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Hashable, Iterable, cast

import jax
from absl import logging

CACHE_DIR_ENV = 'ARCFACE_JAX_CACHE_DIR'
NO_CACHE_ENV = 'ARCFACE_JAX_NO_CACHE'
_FALSE_WORDS = ('', '0', 'false', 'no', 'off')

_seen: set = set()
_lock = threading.Lock()


def default_cache_dir() -> str:
  """$ARCFACE_JAX_CACHE_DIR, else <user cache dir>/arcface_jax/jax_cache."""
  if os.environ.get(CACHE_DIR_ENV):
    return os.path.expanduser(os.environ[CACHE_DIR_ENV])
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'arcface_jax', 'jax_cache')


def _configured_cache_dir() -> str | None:
  """jax.config's compilation cache folder (None when unset)."""
  # jax.config's options are attributes made at run time, which its type does not declare.
  return cast(Any, jax.config).jax_compilation_cache_dir


def enable_persistent_cache() -> str | None:
  """Turns JAX's persistent compilation cache on; returns its folder, or None when it is off.

  Leaves a cache folder chosen through JAX_COMPILATION_CACHE_DIR or jax.config in place (and
  returns it). Programs are cached however quickly they compiled (unless the user set
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS): the detector's many small programs add up.
  """
  if os.environ.get(NO_CACHE_ENV, '').strip().lower() not in _FALSE_WORDS:
    return None
  chosen = _configured_cache_dir() or os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if chosen:
    return chosen
  directory = default_cache_dir()
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:  # a read-only home: run without the cache rather than fail
    logging.warning(
      'Compilation cache off: cannot create %s (%s); set %s to a writable folder.',
      directory,
      error,
      CACHE_DIR_ENV,
    )
    return None
  jax.config.update('jax_compilation_cache_dir', directory)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return directory


def first_seen(keys: Iterable[Hashable]) -> list:
  """The keys (say, a program and its input shape) not seen before in this process, in order.

  Marks them seen: a caller logs one line for the programs about to compile, and never again.
  """
  new = []
  with _lock:
    for key in keys:
      if key not in _seen:
        _seen.add(key)
        new.append(key)
  return new


def log_compile(message: str) -> None:
  """Logs one line before a compile that may take seconds, saying whether a cache will keep it."""
  cache = _configured_cache_dir()
  logging.info(
    '%s%s',
    message,
    f'; kept in the compilation cache {cache}'
    if cache
    else '; the compilation cache is off, so every new process compiles again',
  )
