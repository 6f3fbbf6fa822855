"""The faces commands' persistent compilation cache and their one line before a compile."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from arcface_jax.faces import compilation


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation.CACHE_DIR_ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compilation.default_cache_dir() == str(tmp_path / 'xdg' / 'arcface_jax' / 'jax_cache')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compilation.default_cache_dir() == str(
    tmp_path / 'home' / '.cache' / 'arcface_jax' / 'jax_cache'
  )
  monkeypatch.setenv(compilation.CACHE_DIR_ENV, str(tmp_path / 'mine'))
  assert compilation.default_cache_dir() == str(tmp_path / 'mine')


def test_a_cache_chosen_by_the_user_is_kept():
  # tests/conftest.py chose one through JAX_COMPILATION_CACHE_DIR before JAX started.
  import jax  # pylint: disable=import-outside-toplevel

  chosen = os.environ['JAX_COMPILATION_CACHE_DIR']
  assert compilation.enable_persistent_cache() == chosen
  assert jax.config.jax_compilation_cache_dir in (None, chosen)


def test_cache_is_on_by_default_off_by_environment_and_fills_on_compile(tmp_path):
  script = textwrap.dedent('''
      import os, sys
      import jax, jax.numpy as jnp
      from arcface_jax.faces import compilation
      os.environ['ARCFACE_JAX_NO_CACHE'] = '1'
      assert compilation.enable_persistent_cache() is None
      assert not jax.config.jax_compilation_cache_dir
      del os.environ['ARCFACE_JAX_NO_CACHE']
      print(compilation.enable_persistent_cache())
      jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(7)).block_until_ready()
  ''')
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE', 'ARCFACE_JAX'))
  }
  env['XDG_CACHE_HOME'] = str(tmp_path)
  result = subprocess.run(
    [sys.executable, '-c', script],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  cache = tmp_path / 'arcface_jax' / 'jax_cache'
  assert result.stdout.strip() == str(cache)
  assert any(cache.iterdir())  # the quick compile was kept too (minimum compile time 0)


def test_first_seen_and_one_log_line(caplog):
  assert compilation.first_seen([('test', 1), ('test', 2)]) == [('test', 1), ('test', 2)]
  assert compilation.first_seen([('test', 2), ('test', 3)]) == [('test', 3)]
  assert compilation.first_seen([('test', 1)]) == []
  with caplog.at_level(logging.INFO):
    compilation.log_compile('MTCNN: compiling P-Net for 3 pyramid level size(s)')
  lines = [r.getMessage() for r in caplog.records if 'compiling P-Net' in r.getMessage()]
  assert len(lines) == 1 and 'compilation cache' in lines[0]
