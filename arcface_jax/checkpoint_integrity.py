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


def _relative_files(step_dir: str) -> list[str]:
  found = []
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.relpath(os.path.join(root, name), step_dir)
      if path not in (SUMS_FILE, SUMS_FILE + '.partial'):
        found.append(path.replace(os.sep, '/'))
  return sorted(found)


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def write_sums(step_dir: str) -> str:
  """Hashes every file of a finished step into `<step_dir>/SHA256SUMS` (atomically)."""
  lines = [f'{_sha256(os.path.join(step_dir, name))}  {name}\n'
           for name in _relative_files(step_dir)]
  path = os.path.join(step_dir, SUMS_FILE)
  partial = f'{path}.partial'
  with open(partial, 'w') as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)
  return path


def has_sums(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, SUMS_FILE))


def _in_scope(name: str, items: Iterable[str] | None) -> bool:
  """Top-level files always; files inside an item only when that item is asked for."""
  if items is None or '/' not in name:
    return True
  return name.split('/', 1)[0] in items


def _listing(names: list[str], limit: int = 3) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def verify(step_dir: str, items: Iterable[str] | None = None) -> Damage | None:
  """Damage of a step with SHA256SUMS (None when intact); `items` limits the check to them.

  A step without SHA256SUMS returns None: see the module docstring.
  """
  if not os.path.isdir(step_dir):
    return Damage('missing', f'{step_dir} is gone')
  path = os.path.join(step_dir, SUMS_FILE)
  if not os.path.exists(path):
    return None
  items = None if items is None else tuple(items)
  expected: dict[str, str] = {}
  try:
    with open(path) as f:
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
  present = {name for name in _relative_files(step_dir) if _in_scope(name, items)}
  missing = sorted(set(expected) - present)
  if missing:
    items_gone = sorted({name.split('/', 1)[0] for name in missing if '/' in name
                         and not os.path.isdir(os.path.join(step_dir, name.split('/', 1)[0]))})
    if items_gone:
      return Damage(f'missing-{items_gone[0]}', f'item {items_gone[0]}/ is missing')
    return Damage('missing-files', f'{len(missing)} files are missing: {_listing(missing)}')
  unexpected = sorted(present - set(expected))
  if unexpected:
    return Damage('unexpected-files', f'{len(unexpected)} files are not in its {SUMS_FILE}: '
                  f'{_listing(unexpected)}')
  altered = [name for name, digest in sorted(expected.items())
             if _sha256(os.path.join(step_dir, name)) != digest]
  if altered:
    return Damage('checksum-mismatch', f'{len(altered)} files do not match their checksum '
                  f'(truncated or altered): {_listing(altered)}')
  return None


def set_aside(workdir: str, step_dir: str, step: int, damage: Damage) -> str:
  """Moves a damaged step to `<workdir>/damaged_checkpoints/<step>-<reason>` and returns it."""
  parent = os.path.join(os.path.abspath(workdir), DAMAGED_DIR)
  os.makedirs(parent, exist_ok=True)
  slug = re.sub('[^A-Za-z0-9_-]+', '-', damage.reason).strip('-') or 'damaged'
  target = os.path.join(parent, f'{step}-{slug}')
  suffix = 1
  while os.path.exists(target):
    suffix += 1
    target = os.path.join(parent, f'{step}-{slug}-{suffix}')
  os.rename(step_dir, target)
  note = (f'Checkpoint step {step} was set aside on {time.strftime("%Y-%m-%d %H:%M:%S %Z")} by '
          f'pid {os.getpid()} on {socket.gethostname()}: {damage.detail}.\n'
          f'It was moved here from {step_dir} and is not read again. Delete it when you no '
          'longer need it for inspection.\n')
  try:
    with open(os.path.join(target, DAMAGE_NOTE), 'w') as f:
      f.write(note)
  except OSError:
    pass  # the move is what matters; the note is a courtesy (the disk may be full)
  return target
