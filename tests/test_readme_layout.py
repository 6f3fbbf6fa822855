"""README's layout table matches the tree: every listed path exists, and every package, top-level
module of arcface_jax and top-level folder is listed."""

from __future__ import annotations

import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layout_rows() -> list[str]:
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    text = f.read()
  section = text.split('## Layout', 1)[1].split('\n## ', 1)[0]
  return [line.split('|')[1] for line in section.splitlines() if line.startswith('| `')]


def _listed_paths() -> set[str]:
  """Each row's first cell: `a/b/`, `c.py` → paths, a bare name relative to the row's first."""
  paths = set()
  for cell in _layout_rows():
    names = re.findall(r'`([^`]+)`', cell)
    base = os.path.dirname(names[0].rstrip('/')) if '/' in names[0].rstrip('/') else ''
    for k, name in enumerate(names):
      paths.add(name.rstrip('/') if k == 0 or '/' in name else os.path.join(base, name))
  return paths


def test_every_listed_path_exists():
  missing = sorted(p for p in _listed_paths() if not os.path.exists(os.path.join(REPO, p)))
  assert not missing, f'README layout names paths that do not exist: {missing}'


def test_every_package_module_and_folder_is_listed():
  listed = _listed_paths()
  tracked = subprocess.run(
    ['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout.split()
  wanted = {path.split('/')[0] for path in tracked if '/' in path and not path.startswith('.')}
  wanted |= {
    os.path.dirname(path)
    for path in tracked
    if path.startswith('arcface_jax/') and path.count('/') == 2 and path.endswith('__init__.py')
  }
  wanted |= {
    path
    for path in tracked
    if path.startswith('arcface_jax/')
    and path.count('/') == 1
    and path.endswith('.py')
    and '__' not in path
  }
  unlisted = sorted(wanted - listed)
  assert not unlisted, f'README layout table does not list: {unlisted}'
