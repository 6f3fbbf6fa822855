"""One trainer per workdir: a second one is refused naming the holder, a dead holder's lock is
taken over, a lock recorded by another host is not."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from arcface_jax import parallel, trainer, workdir_lock
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')

_HOLD = textwrap.dedent("""
    import sys
    from arcface_jax.workdir_lock import WorkdirLock
    with WorkdirLock(sys.argv[1]):
      print('locked', flush=True)
      sys.stdin.read()  # until the test closes our stdin (or kills us)
""")


def _holder(workdir):
  process = subprocess.Popen(
    [sys.executable, '-c', _HOLD, workdir],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    cwd=REPO,
  )
  assert process.stdout.readline().strip() == 'locked'
  return process


def test_second_trainer_on_a_workdir_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  holder = _holder(workdir)
  try:
    config = load_config(TINY)
    config.data.data_dir = str(tmp_path / 'data')  # never generated: refused before the data
    with pytest.raises(workdir_lock.WorkdirLockedError) as error:
      trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(1))
    message = str(error.value)
    assert f'pid {holder.pid}' in message and socket.gethostname() in message
    assert 'started' in message and '--workdir' in message
    assert not os.path.exists(os.path.join(workdir, 'config.json'))  # nothing was touched
    # The command line: one line on stderr, exit 2.
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'arcface_jax.train',
        '--config',
        TINY,
        '--workdir',
        workdir,
        f'--config.data.data_dir={config.data.data_dir}',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f'pid {holder.pid}' in result.stderr and 'Traceback' not in result.stderr
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  # A clean exit removes the lock; the next run takes it without a word.
  assert not os.path.exists(workdir_lock.lock_path(workdir))


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  holder = _holder(workdir)
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  assert os.path.exists(workdir_lock.lock_path(workdir))  # left behind by the killed process
  assert workdir_lock.live_holder(workdir) is None
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(workdir):
      assert workdir_lock.live_holder(workdir).pid == os.getpid()
  assert f'stale lock of pid {holder.pid}' in caplog.text
  assert not os.path.exists(workdir_lock.lock_path(workdir))


def test_lock_recorded_by_another_host_is_not_taken_over(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with open(workdir_lock.lock_path(workdir), 'w') as f:
    f.write('{"pid": 4242, "host": "elsewhere", "started": "yesterday"}')
  with pytest.raises(workdir_lock.WorkdirLockedError, match='pid 4242 on host elsewhere.*delete'):
    workdir_lock.WorkdirLock(workdir).acquire()
