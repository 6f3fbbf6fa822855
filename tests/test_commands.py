"""Every command: `--help` says what it does with an example and exits 0, and `python -m
arcface_jax` lists every entry point that exists (found by walking the tree, so a new command
without a listing fails here)."""

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAIN_GUARD = re.compile(r'^if __name__ == [\'"]__main__[\'"]:', re.M)


def _entry_points() -> list[str]:
  """How each command is invoked: `python -m pkg.module` or `python benchmarks/x.py`."""
  found = []
  for package in ('arcface_jax', 'analysis', 'benchmarks'):
    for directory, _, files in os.walk(os.path.join(REPO, package)):
      for name in sorted(files):
        path = os.path.join(directory, name)
        if not name.endswith('.py') or path == os.path.join(REPO, 'arcface_jax', '__main__.py'):
          continue
        with open(path, encoding='utf-8') as f:
          if not _MAIN_GUARD.search(f.read()):
            continue
        relative = os.path.relpath(path, REPO)
        if package == 'benchmarks':
          found.append(f'python {relative}')
        else:
          module = relative[:-3].replace(os.sep, '.')
          found.append(f'python -m {module.removesuffix(".__main__")}')
  return sorted(found)


ENTRY_POINTS = _entry_points()


def test_entry_points_are_found():
  assert {
    'python -m arcface_jax.train',
    'python -m arcface_jax.evaluate',
    'python -m arcface_jax.faces',
    'python benchmarks/head.py',
  } <= set(ENTRY_POINTS)


def test_python_m_arcface_jax_lists_every_command():
  done = subprocess.run(
    [sys.executable, '-m', 'arcface_jax'], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-2000:]
  listed = {
    line.strip().split('  ')[0]
    for line in done.stdout.splitlines()
    if line.strip().startswith('python ')
  }
  missing = sorted(set(ENTRY_POINTS) - listed)
  assert not missing, f'commands missing from arcface_jax/commands.py COMMANDS: {missing}'
  stale = sorted(listed - set(ENTRY_POINTS))
  assert not stale, f'listed commands that do not exist: {stale}'


@pytest.mark.parametrize('command', ENTRY_POINTS)
def test_help_says_what_and_shows_an_example(command, monkeypatch):
  target = command.split()[-1]
  argv0 = os.path.join(REPO, target) if target.endswith('.py') else target
  monkeypatch.setattr(sys, 'argv', [argv0, '--help'])
  monkeypatch.chdir(REPO)
  out = io.StringIO()
  with (
    pytest.raises(SystemExit) as exit_info,
    contextlib.redirect_stdout(out),
    warnings.catch_warnings(),
  ):
    warnings.simplefilter('ignore', RuntimeWarning)  # runpy: module already imported
    if target.endswith('.py'):
      runpy.run_path(argv0, run_name='__main__')
    else:
      runpy.run_module(target, run_name='__main__', alter_sys=True)
  assert exit_info.value.code in (0, None), out.getvalue()[-2000:]
  text = out.getvalue()
  assert len(text.strip().splitlines()) > 2, text
  examples = [
    line
    for line in text.splitlines()
    if line.strip().startswith(('python ', '.venv/bin/python ', 'make '))
    and target.removesuffix('.py').replace('/', '.').split('.')[-1] in line
  ]
  assert examples, f'{command} --help shows no example invocation:\n{text[:3000]}'


TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


def test_config_overrides_are_typed_like_the_values_they_replace():
  from arcface_jax import train

  args = train.parse_args(
    [
      'train',
      '--config',
      TINY,
      '--workdir',
      'w',
      '--config.train.learning_rate=0.05',
      '--config.train.num_steps',
      '7',
      '--config.data.flip=false',
      '--config.eval.evaluators=verification,ijb',
      '--config.train.lr_boundaries=(2, 3)',
      '--config.train.warmup_steps=1e1',
    ]
  )
  train_config = args.config.train
  assert args.workdir == 'w'
  assert train_config.learning_rate == 0.05 and isinstance(train_config.learning_rate, float)
  assert train_config.num_steps == 7 and train_config.warmup_steps == 10
  assert args.config.data.flip is False
  assert args.config.eval.evaluators == ('verification', 'ijb')
  assert tuple(train_config.lr_boundaries) == (2, 3)


@pytest.mark.parametrize(
  'argument,fragment',
  [
    ('--config.train.bacth_size=8', "no key 'train.bacth_size'"),
    ('--config.train.num_steps=many', 'expected an integer'),
    ('--config.data.flip=maybe', 'expected true or false'),
    ('--config.train=1', 'is a group of keys'),
  ],
)
def test_bad_override_is_one_line_and_exit_2(argument, fragment, capsys):
  from arcface_jax import train

  with pytest.raises(SystemExit) as exit_info:
    train.parse_args(['train', '--config', TINY, '--workdir', 'w', argument])
  assert exit_info.value.code == 2
  errors = capsys.readouterr().err.strip().splitlines()
  assert len(errors) == 1 and errors[0].startswith('error: ') and fragment in errors[0], errors
