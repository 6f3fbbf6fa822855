"""Workdir and data paths through `etils.epath`: a local directory or an object-store URI.

A run's workdir may be local (`runs/ms1m`) or remote (`gs://bucket/runs/ms1m`, the layout
`launch/tpu_vm.sh` recommends, so that every host of a TPU slice sees the same checkpoints).
Everything written into it (checkpoints, config.json, checksums, evaluation JSON, TensorBoard
events, figures, the lock file) goes through `epath.Path`, whose backend is the local filesystem
for a plain path and fsspec (gcsfs for `gs://`) or TensorFlow's gfile for a URI. `os.path` is kept
for what is local by nature (the compilation cache, the download cache, temporary files).

Data paths go the same way: a dataset, verification set, photo or gallery may be `gs://...`.
The helpers below keep the plain `open`/`os` call for a local path (no per-call dispatch cost on
a million-file tree) and use `epath` only for a URI.

Object stores differ from a disk in ways the callers handle: there is no rename of a directory
(a move is a copy and a delete), no advisory lock, and no partially written object (an upload
appears whole or not at all, so atomic writes need no temporary name).
"""

from __future__ import annotations

import os

from etils import epath

PathLike = str | os.PathLike  # what every function here accepts


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URI (gs://, s3://, ...) rather than a local path."""
  return '://' in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """An `epath.Path` for `path`: absolute (and `~` expanded) when local, as given when remote.

  Orbax needs absolute local paths; a URI must not go through `os.path.abspath`, which would
  turn `gs://bucket/run` into `<cwd>/gs:/bucket/run`.
  """
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def join(base: PathLike, *parts: str) -> str:
  """`base`/`parts` as a string: `os.path.join` locally, '/'-joined for a URI."""
  if is_remote(base):
    return os.fspath(epath.Path(base).joinpath(*parts))
  return os.path.join(os.fspath(base), *parts)


def is_file(path: PathLike) -> bool:
  return epath.Path(path).is_file() if is_remote(path) else os.path.isfile(path)


def is_dir(path: PathLike) -> bool:
  return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def read_bytes(path: PathLike) -> bytes:
  """The whole file; OSError (FileNotFoundError, PermissionError) as `open` raises it."""
  if is_remote(path):
    return epath.Path(path).read_bytes()
  with open(path, 'rb') as f:
    return f.read()


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode()


def list_dir(path: PathLike) -> list[tuple[str, bool, bool]]:
  """(name, is a directory, is a regular file) of each entry of `path`, sorted by name.

  Locally both flags follow symlinks and a broken link or a socket is neither; an object store
  holds only objects and the prefixes above them.
  """
  if is_remote(path):
    found = []
    for child in epath.Path(path).iterdir():
      is_directory = child.is_dir()
      found.append((child.name, is_directory, not is_directory))
    return sorted(found)
  with os.scandir(os.fspath(path)) as entries:
    return sorted((entry.name, entry.is_dir(), entry.is_file()) for entry in entries)


def write_text_atomic(path: PathLike, text: str) -> None:
  """Writes `text` so that a reader sees the old or the new file, never a partial one.

  Locally: a temporary file, fsync, then rename over the target. On an object store an upload
  is already all-or-nothing, and a rename would be a copy: the object is written directly.
  """
  write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
  target = epath.Path(path)
  if is_remote(target):
    target.write_bytes(data)
    return
  partial = f'{os.fspath(target)}.partial'
  with open(partial, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, os.fspath(target))


def relative_files(directory: PathLike) -> list[str]:
  """Every file under `directory`, as '/'-separated paths relative to it, sorted.

  Walks with `iterdir` rather than `epath.Path.walk`, whose fsspec backend yields directories
  without their `gs://` prefix.
  """
  root = epath.Path(directory)
  found: list[str] = []
  pending = [(root, '')]
  while pending:
    folder, prefix = pending.pop()
    for child in folder.iterdir():
      name = prefix + child.name
      if child.is_dir():
        pending.append((child, name + '/'))
      else:
        found.append(name)
  return sorted(found)


def copy_local_tree(local_dir: PathLike, target: PathLike) -> None:
  """Copies the files under local `local_dir` into `target` (local or remote), keeping layout.

  For what a library can only write to a local file (tensorboardX's SummaryWriter appends):
  it writes into a temporary directory, and this puts the result where the run's outputs live.
  """
  target_path = epath.Path(target)
  for name in relative_files(local_dir):
    destination = target_path / name
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(local_dir, name), 'rb') as f:
      destination.write_bytes(f.read())
