"""A fake gs:// bucket for tests: `fake_gcs`, a fixture routing gs:// to a local directory.

There is no network here, so the bucket is a fake at the two places where bytes leave the
process: fsspec's `gs` filesystem (what `etils.epath` uses for gs:// without TensorFlow) is a
directory on disk, and the TensorStore kvstore that orbax builds for a gs:// checkpoint is a file
kvstore on the same directory; orbax's bucket query (hierarchical namespace or not) answers "no".
Everything above them runs as it would against Cloud Storage. The fixture yields the directory
(`gs://b/x` is `<root>/b/x`), runs the test from an empty current directory and fails it if
anything landed there: a URI treated as a local path (`os.path.abspath('gs://b/run')`) would
have written `./gs:/b/run`.

Use it from a test module with `fake_gcs = fake_gcs_module.fake_gcs` after
`import fake_gcs as fake_gcs_module` (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import importlib
import os
import types

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

# The module's dict of registered protocols (the package's `fsspec.registry` is a read-only view).
_FSSPEC_REGISTRY = importlib.import_module('fsspec.registry')._registry  # pylint: disable=protected-access


class _BucketOnDisk(DirFileSystem):
  """fsspec's `gs` protocol served from a local directory (`root`/<bucket>/<object>)."""

  protocol = ('gs', 'gcs')
  root = ''

  def __init__(self, *args, **kwargs):  # epath passes gcsfs options (finalize_on_close)
    del args, kwargs
    super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True))


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Routes gs:// to tmp_path/bucket_root for epath (fsspec) and orbax (TensorStore)."""
  from orbax.checkpoint._src.path import gcs_utils

  root = tmp_path / 'bucket_root'
  root.mkdir()
  monkeypatch.setattr(_BucketOnDisk, 'root', str(root))
  saved = {name: _FSSPEC_REGISTRY.get(name) for name in ('gs', 'gcs')}
  for name in saved:
    fsspec.register_implementation(name, _BucketOnDisk, clobber=True)
  _BucketOnDisk.clear_instance_cache()
  from etils.epath import backend

  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access

  def kvstore(path: str) -> dict:
    bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {'driver': 'file', 'path': os.path.join(root, bucket, key)}

  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', kvstore)
  monkeypatch.setattr(
    gcs_utils,
    'get_bucket',
    lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False),
  )
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  for name, cls in saved.items():
    if cls is None:
      _FSSPEC_REGISTRY.pop(name, None)
    else:
      fsspec.register_implementation(name, cls, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  assert not os.listdir(cwd), f'a gs:// path was written as a local one: {os.listdir(cwd)}'
