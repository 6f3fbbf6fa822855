"""Start a run from pretrained backbone weights: `config.model.init_from`.

What `init_from` may name (checked in this order):
- an `http://`, `https://` or `file://` URL of an ONNX file, with its sha256 checksum as
  `URL#sha256=HEX` or in `config.model.init_from_sha256`: downloaded once into the cache
  directory ($XDG_CACHE_HOME/arcface_jax, else ~/.cache/arcface_jax) and checked; a file whose
  checksum differs is deleted and the run stops naming both checksums;
- a training workdir: the backbone of its latest checkpoint (its config.json says the model);
- a directory written by `python -m arcface_jax.models.import_onnx` (variables.msgpack,
  model.json);
- an `.onnx` file in insightface's layout (a published model, or `arcface_jax.export --format
  onnx` output), converted by `arcface_jax.models.import_onnx` as config.model.name.
A `.jax_export` file cannot be a starting point: its weights are constants folded into a compiled
program, not variables that can be read back; start from the workdir or ONNX file it came from.

The backbone's parameters and batch-norm statistics replace the fresh ones; the optimizer state
starts empty. The classifier head always starts fresh: its rows are the classes of the source's
dataset, and an equal class count does not make them the same people (to continue a run on the
same data, resume it in its own workdir). Every source variable must match this run's model in
path and shape; the first that does not is named in one error. This happens only at the start of
a run: a run resuming from its own checkpoint ignores `init_from` (and logs that it does).
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from arcface_jax import models, optim, paths

URL_SCHEMES = ('http', 'https', 'file')
_CHUNK = 1 << 20


class InitFromError(ValueError):
  """`config.model.init_from` names nothing usable; the message says what and how to fix it."""


def cache_dir() -> str:
  """Where downloaded models are kept: $XDG_CACHE_HOME/arcface_jax or ~/.cache/arcface_jax."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'arcface_jax')


def _sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(url: str, sha256: str = '') -> str:
  """The local path of `url`'s file, downloaded into `cache_dir()` once and checksum-verified."""
  parsed = urllib.parse.urlsplit(url)
  fragment = urllib.parse.parse_qs(parsed.fragment)
  expected = (fragment.get('sha256', [''])[0] or sha256).strip().lower()
  bare = urllib.parse.urlunsplit(parsed._replace(fragment=''))
  if len(expected) != 64 or any(c not in '0123456789abcdef' for c in expected):
    raise InitFromError(
      f'config.model.init_from={url!r}: a URL needs its sha256 checksum (64 hex digits), as '
      f'{bare}#sha256=HEX or --config.model.init_from_sha256=HEX; `sha256sum FILE` prints it'
    )
  name = os.path.basename(parsed.path) or 'model'
  target = os.path.join(cache_dir(), f'{expected[:16]}-{name}')
  if os.path.exists(target) and _sha256_of(target) == expected:
    logging.info('init_from: using %s (cached download of %s)', target, bare)
    return target
  os.makedirs(cache_dir(), exist_ok=True)
  partial = f'{target}.part{os.getpid()}'
  digest = hashlib.sha256()
  try:
    from tqdm import tqdm

    with urllib.request.urlopen(bare) as response, open(partial, 'wb') as out:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(
        total=total,
        unit='B',
        unit_scale=True,
        desc=f'downloading {name}',
        disable=total is not None and total < 8 * _CHUNK,
      ) as progress:
        for chunk in iter(lambda: response.read(_CHUNK), b''):
          out.write(chunk)
          digest.update(chunk)
          progress.update(len(chunk))
  except (OSError, ValueError) as e:  # URLError is an OSError
    _remove(partial)
    raise InitFromError(f'config.model.init_from: cannot download {bare} ({e})') from None
  found = digest.hexdigest()
  if found != expected:
    _remove(partial)
    raise InitFromError(
      f'config.model.init_from: {bare} has sha256 {found}, expected {expected}; '
      'the download was deleted. Check the URL and the checksum.'
    )
  os.replace(partial, target)
  logging.info('init_from: downloaded %s to %s (sha256 verified)', bare, target)
  return target


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


# ---------------------------------------------------------------- reading each kind of source


def _from_workdir(workdir: str, abstract: dict[str, Any]) -> dict[str, Any]:
  from arcface_jax import reporting
  from arcface_jax.checkpoint_reading import restore_model_variables

  source_config = reporting.read_config(workdir)
  source_model = models.get(
    source_config.model.name, embedding_dim=source_config.model.embedding_dim
  )
  size = source_config.data.image_size
  source_shapes = models.abstract_variables(source_model, size)
  check_compatible(
    abstract, source_shapes, f'{workdir} ({source_config.model.name}, {size}×{size} input)'
  )
  variables, step = restore_model_variables(workdir, abstract)
  logging.info('init_from: backbone of %s at step %d', workdir, step)
  return variables


def _from_onnx(path: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  try:
    import onnx
  except ImportError:
    raise InitFromError(
      f'config.model.init_from={path!r}: reading ONNX needs the `onnx` package '
      "(pip install 'arcface_jax[compare]')"
    ) from None
  from arcface_jax.models import import_onnx

  try:
    _, variables = import_onnx.convert(
      onnx.load(path), config.model.name, image_size=config.data.image_size
    )
  except (ValueError, KeyError) as e:
    raise InitFromError(
      f'config.model.init_from={path!r} is not a {config.model.name} with '
      f'{config.data.image_size}×{config.data.image_size} input: {e}'
    ) from None
  return variables


def _from_imported(directory: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  from arcface_jax.models import import_onnx

  _, variables, meta = import_onnx.load(directory)
  if meta['arch'] != config.model.name:
    raise InitFromError(
      f'config.model.init_from={directory!r} holds a {meta["arch"]!r} model, '
      f'but config.model.name={config.model.name!r}; set '
      f'--config.model.name={meta["arch"]}'
    )
  return variables


def resolve(spec: str, sha256: str = '') -> tuple[str, str]:
  """(kind, local path) of an init_from value; kind in workdir | imported | onnx."""
  if urllib.parse.urlsplit(spec).scheme in URL_SCHEMES:
    return 'onnx', fetch(spec, sha256)
  if paths.is_remote(spec):  # gs://...: a training workdir is read through epath and orbax
    if (epath.Path(spec) / 'checkpoints').is_dir():
      return 'workdir', spec
    raise InitFromError(
      f'config.model.init_from={spec!r} has no checkpoints/: a remote '
      'init_from must be a training workdir (copy an ONNX file or import_onnx '
      'directory to a local disk first)'
    )
  path = os.path.expanduser(spec)
  if os.path.isdir(path):
    if os.path.isdir(os.path.join(path, 'checkpoints')):
      return 'workdir', path
    if os.path.exists(os.path.join(path, 'variables.msgpack')):
      return 'imported', path
    raise InitFromError(
      f'config.model.init_from={spec!r} is a directory with neither checkpoints/ '
      '(a training workdir) nor variables.msgpack (an import_onnx output)'
    )
  if not os.path.exists(path):
    raise InitFromError(
      f'config.model.init_from={spec!r} does not exist; give a training workdir, '
      'an import_onnx directory, an .onnx file or an https URL of one'
    )
  if path.endswith('.jax_export'):
    raise InitFromError(
      f'config.model.init_from={spec!r} is a StableHLO export: its weights are constants baked '
      'into a compiled program and cannot be trained further. Start from the training workdir '
      'or the ONNX file it was exported from.'
    )
  if path.lower().endswith('.onnx'):
    return 'onnx', path
  raise InitFromError(
    f'config.model.init_from={spec!r}: unknown kind of file (expected .onnx, a '
    'training workdir or an import_onnx directory)'
  )


def load_backbone(config: ml_collections.ConfigDict, abstract: dict[str, Any]) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `config.model.init_from`, checked against `abstract`."""
  spec = config.model.init_from
  kind, path = resolve(spec, config.model.init_from_sha256)
  if kind == 'workdir':
    return _from_workdir(path, abstract)
  variables = _from_onnx(path, config) if kind == 'onnx' else _from_imported(path, config)
  variables = {k: variables.get(k, {}) for k in ('params', 'batch_stats')}
  check_compatible(abstract, variables, spec)
  return variables


def _shapes(variables: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """'/'-joined path → shape; parameters first (as freeze expressions see them, backbone/...),
  then statistics (batch_stats/...)."""
  shapes = {}
  for kind, prefix in (('params', 'backbone'), ('batch_stats', 'batch_stats')):
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables.get(kind, {}))[0]:
      shapes[f'{prefix}/{optim.path_string(path)}'] = tuple(np.shape(leaf))
  return shapes


def check_compatible(expected: dict[str, Any], found: dict[str, Any], source: str) -> None:
  """InitFromError naming the first variable whose path or shape differs."""
  want, have = _shapes(expected), _shapes(found)
  for path, shape in want.items():
    if path not in have:
      raise InitFromError(
        f'init_from {source}: {path}: this model expects shape {shape}, the '
        'source has no such variable (a different architecture? check '
        'config.model.name)'
      )
    if have[path] != shape:
      raise InitFromError(
        f'init_from {source}: {path}: this model expects shape {shape}, the '
        f'source has {have[path]} (check config.model.name, embedding_dim and '
        'data.image_size)'
      )
  extra = [p for p in have if p not in want]
  if extra:
    raise InitFromError(
      f'init_from {source}: {extra[0]} (shape {have[extra[0]]}) has no '
      'counterpart in this model (a different architecture? check '
      'config.model.name)'
    )


def initialize(state: Any, config: ml_collections.ConfigDict) -> Any:
  """`state` with its backbone replaced by init_from's (no-op when init_from is '')."""
  if not config.model.init_from:
    return state
  current = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), current
  )
  loaded = load_backbone(config, abstract)
  placed = jax.tree.map(
    lambda value, like: jax.device_put(np.asarray(value, like.dtype), like.sharding),
    loaded,
    current,
  )
  count = len(jax.tree.leaves(placed))
  logging.info(
    'init_from: backbone (%d arrays) from %s; the classifier head starts fresh',
    count,
    config.model.init_from,
  )
  return state.replace(
    params={**state.params, 'backbone': placed['params']}, batch_stats=placed['batch_stats']
  )
