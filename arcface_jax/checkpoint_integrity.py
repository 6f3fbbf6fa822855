"""Checksums of saved checkpoint steps, and setting damaged steps aside.

Every finished step directory `checkpoints/<step>/` gets a `SHA256SUMS` file listing the SHA-256
of each of its files, in the format `sha256sum -c SHA256SUMS` reads. It is written only after
orbax has finalised the step (an asynchronous save is complete), so it describes the files as
orbax left them. A restore checks it first: a missing, truncated or altered file, or a missing
item such as `model/`, is damage. A damaged step is moved, not deleted, to
`<workdir>/damaged_checkpoints/<step>-<reason>/` with a DAMAGE.txt saying why, and the restore
falls back to the newest intact earlier step.

A step without SHA256SUMS (the process stopped between orbax's finalisation and the checksum, or
an older version of this code wrote it) is restored unverified with a warning: its files may be
fine, and refusing it would throw away the newest work. If orbax cannot read it, it is damaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import time
from typing import Iterable

from etils import epath

from arcface_jax import paths

SUMS_FILE = 'SHA256SUMS'
DAMAGED_DIR = 'damaged_checkpoints'
DAMAGE_NOTE = 'DAMAGE.txt'


@dataclasses.dataclass(frozen=True)
class Damage:
  """Why a step cannot be used: `reason` is a short slug for the directory name."""

  reason: str
  detail: str

  def __str__(self) -> str:
    return self.detail


def _relative_files(step_dir: paths.PathLike) -> list[str]:
  return [
    name
    for name in paths.relative_files(step_dir)
    if name not in (SUMS_FILE, SUMS_FILE + '.partial')
  ]


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def write_sums(step_dir: paths.PathLike) -> epath.Path:
  """Hashes every file of a finished step into `<step_dir>/SHA256SUMS` (atomically)."""
  directory = epath.Path(step_dir)
  lines = [f'{_sha256(directory / name)}  {name}\n' for name in _relative_files(directory)]
  path = directory / SUMS_FILE
  paths.write_text_atomic(path, ''.join(lines))
  return path


def has_sums(step_dir: paths.PathLike) -> bool:
  return (epath.Path(step_dir) / SUMS_FILE).is_file()


def _in_scope(name: str, items: Iterable[str] | None) -> bool:
  """Top-level files always; files inside an item only when that item is asked for."""
  if items is None or '/' not in name:
    return True
  return name.split('/', 1)[0] in items


def _listing(names: list[str], limit: int = 3) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def verify(step_dir: paths.PathLike, items: Iterable[str] | None = None) -> Damage | None:
  """Damage of a step with SHA256SUMS (None when intact); `items` limits the check to them.

  A step without SHA256SUMS returns None: see the module docstring.
  """
  directory = epath.Path(step_dir)
  if not directory.is_dir():
    return Damage('missing', f'{directory} is gone')
  path = directory / SUMS_FILE
  if not path.exists():
    return None
  items = None if items is None else tuple(items)
  expected: dict[str, str] = {}
  try:
    with path.open() as f:
      for line in f:
        digest, name = line.rstrip('\n').split('  ', 1)
        if not re.fullmatch('[0-9a-f]{64}', digest):
          raise ValueError(digest)
        expected[name] = digest
  except (OSError, ValueError, UnicodeDecodeError):
    return Damage('unreadable-checksums', f'its {SUMS_FILE} is unreadable or malformed')
  for item in items or ():
    if not any(name.startswith(item + '/') for name in expected):
      return Damage(f'missing-{item}', f'its {SUMS_FILE} lists no files of item {item!r}')
  expected = {name: digest for name, digest in expected.items() if _in_scope(name, items)}
  present = {name for name in _relative_files(directory) if _in_scope(name, items)}
  missing = sorted(set(expected) - present)
  if missing:
    items_gone = sorted(
      {
        name.split('/', 1)[0]
        for name in missing
        if '/' in name and not (directory / name.split('/', 1)[0]).is_dir()
      }
    )
    if items_gone:
      return Damage(f'missing-{items_gone[0]}', f'item {items_gone[0]}/ is missing')
    return Damage('missing-files', f'{len(missing)} files are missing: {_listing(missing)}')
  unexpected = sorted(present - set(expected))
  if unexpected:
    return Damage(
      'unexpected-files',
      f'{len(unexpected)} files are not in its {SUMS_FILE}: {_listing(unexpected)}',
    )
  altered = [
    name for name, digest in sorted(expected.items()) if _sha256(directory / name) != digest
  ]
  if altered:
    return Damage(
      'checksum-mismatch',
      f'{len(altered)} files do not match their checksum '
      f'(truncated or altered): {_listing(altered)}',
    )
  return None


def set_aside(
  workdir: paths.PathLike, step_dir: paths.PathLike, step: int, damage: Damage
) -> epath.Path:
  """Moves a damaged step to `<workdir>/damaged_checkpoints/<step>-<reason>` and returns it.

  On an object store the move is a copy of each object and a delete (there are no directories
  to rename); an interrupted move leaves both halves, and the next restore sets aside again.
  """
  parent = paths.resolve(workdir) / DAMAGED_DIR
  parent.mkdir(parents=True, exist_ok=True)
  slug = re.sub('[^A-Za-z0-9_-]+', '-', damage.reason).strip('-') or 'damaged'
  target = parent / f'{step}-{slug}'
  suffix = 1
  while target.exists():
    suffix += 1
    target = parent / f'{step}-{slug}-{suffix}'
  epath.Path(step_dir).rename(target)
  note = (
    f'Checkpoint step {step} was set aside on {time.strftime("%Y-%m-%d %H:%M:%S %Z")} by '
    f'pid {os.getpid()} on {socket.gethostname()}: {damage.detail}.\n'
    f'It was moved here from {step_dir} and is not read again. Delete it when you no '
    'longer need it for inspection.\n'
  )
  try:
    (target / DAMAGE_NOTE).write_text(note)
  except OSError:
    pass  # the move is what matters; the note is a courtesy (the disk may be full)
  return target
