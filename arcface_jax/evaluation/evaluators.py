"""The evaluator registry (name → evaluator) the trainer and `python -m arcface_jax.evaluate` use.

Every evaluator has one interface, `run(embedder, step) -> {metric: float}`, where `embedder` is an
`arcface_jax.inference.Embedder` (a restored checkpoint, or the live training variables wrapped by
`inference.embedder_from_variables`). After a run, `details` holds the evaluator's full results,
the section `eval/step_<N>.json` stores under the evaluator's name. The config picks them by name:

  config.eval.evaluators = ('verification', 'ijb', 'identification')

and each reads its own options: `verification` the keys it had before the registry
(`config.eval.bins`, `bin_dir`, `synthetic_pairs`, `val_pairs`, `nfolds`), `ijb` `config.eval.ijb`
(`dir`, `target`), `identification` `config.eval.identification` (`gallery`, `probe`); `test`
(closed-set top-1 on the run's test split) has none. All use `config.eval.batch_size`.

Verification logs each set in the reference format `[lfw][step] Accuracy-Flip: 0.99817+-0.00229`
and, given `keep_best_in=workdir` (the trainer does), keeps the backbone variables of the best step
per set under `workdir/best/<set>/` with the scores in `workdir/best.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Protocol

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from arcface_jax import paths
from arcface_jax.config_checks import ConfigError
from arcface_jax.evaluation import verification
from arcface_jax.evaluation.extract import extract_embeddings

SYNTHETIC_SET = 'synthetic_heldout'
VAL_SET = 'val'  # pairs from the val split of the training dataset
DEFAULT_EVALUATORS = ('verification',)  # also what runs written before the registry evaluate


class Evaluator(Protocol):
  """What the registry holds: built from the config, run on an embedder at a step."""

  name: str
  details: dict[str, Any]

  def run(self, embedder: Any, step: int) -> dict[str, float]: ...


_REGISTRY: dict[str, Callable[..., Evaluator]] = {}
# Evaluators the trainer cannot run on its live variables (with the reason).
_EVALUATE_COMMAND_ONLY: dict[str, str] = {}


def register(name: str, *, command_only: str | None = None) -> Callable[[type[Any]], type[Any]]:
  """Class decorator: `name` in config.eval.evaluators builds this class."""

  def add(cls: type[Any]) -> type[Any]:
    cls.name = name
    _REGISTRY[name] = cls
    if command_only:
      _EVALUATE_COMMAND_ONLY[name] = command_only
    return cls

  return add


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get(name: str, config: ml_collections.ConfigDict, **options: Any) -> Evaluator:
  """The evaluator `name` for `config`; `options` override its config options (see each class)."""
  if name not in _REGISTRY:
    raise ConfigError(
      f'unknown evaluator {name!r} in config.eval.evaluators; expected some of {", ".join(names())}'
    )
  return _REGISTRY[name](config, **options)


def configured_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  # config.json of runs trained before the registry has no `evaluators`: they verified only.
  chosen = tuple(config.eval.get('evaluators', DEFAULT_EVALUATORS))
  for name in chosen:
    if name not in _REGISTRY:
      raise ConfigError(
        f'config.eval.evaluators: unknown evaluator {name!r}; expected some of {", ".join(names())}'
      )
  return chosen


def for_training(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> list[Evaluator]:
  """The trainer's periodic evaluators: config.eval.evaluators, best variables kept in workdir."""
  evaluators = []
  for name in configured_names(config):
    if name in _EVALUATE_COMMAND_ONLY:
      raise ConfigError(
        f'config.eval.evaluators: {name!r} {_EVALUATE_COMMAND_ONLY[name]}; run '
        f'`python -m arcface_jax.evaluate --workdir {workdir} --{name}` after '
        'training instead'
      )
    options = {'keep_best_in': workdir} if name == 'verification' else {}
    evaluators.append(get(name, config, workdir=workdir, **options))
  return evaluators


def embed_function(
  embedder: Any, batch_size: int, flip: bool = True
) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images (N, S, S, 3) → embeddings (N, D), flip-summed, batched over the mesh."""

  def embed(images: np.ndarray) -> np.ndarray:
    return extract_embeddings(
      embedder.apply,
      images,
      batch_size=batch_size,
      mean=embedder.mean,
      std=embedder.std,
      flip=flip,
      mesh=embedder.mesh,
    )[0]

  return embed


# ------------------------------------------------------------------ verification


def resolve_bin(name_or_path: str, bin_dir: str) -> str:
  """`lfw` → <bin_dir>/lfw.bin; anything ending in .bin is taken as a path."""
  path = (
    name_or_path if name_or_path.endswith('.bin') else paths.join(bin_dir, name_or_path + '.bin')
  )
  if not paths.is_file(path):  # local or gs://
    raise FileNotFoundError(
      f'verification set {name_or_path!r}: {path} does not exist; put the .bin file there, set '
      '--config.eval.bin_dir, or remove it from config.eval.bins'
    )
  return path


def load_bins(entries: Any, bin_dir: str, size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
  from arcface_jax.data.verification_bin import load_bin

  sets = []
  for entry in entries:
    path = resolve_bin(entry, bin_dir)
    images, issame = load_bin(path, image_size=(size, size))
    sets.append((os.path.splitext(os.path.basename(path))[0], images, issame))
  return sets


def load_sets(config: ml_collections.ConfigDict) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """(name, images uint8 (2N, S, S, 3), issame (N,)) for every set the config names."""
  sets = []
  size = config.data.image_size
  if config.eval.synthetic_pairs:
    from arcface_jax.data import synthetic

    images, issame = synthetic.synthetic_verification_pairs(
      config.data.synthetic_variant,
      config.data.data_dir,
      config.eval.synthetic_pairs,
      image_size=size,
    )
    sets.append((SYNTHETIC_SET, images, issame))
  if config.eval.val_pairs:
    from arcface_jax.data import pairs, sources

    source = sources.get_source(config.data, 'val')
    images, issame = pairs.verification_pairs(
      source,
      sources.source_labels(source),
      config.eval.val_pairs,
      seed=config.data.split_seed,
      image_size=size,
    )
    sets.append((VAL_SET, images, issame))
  return sets + load_bins(config.eval.bins, config.eval.bin_dir, size)


@register('verification')
class VerificationEvaluator:
  """The 10-fold protocol on every configured set (or on `bins` only, when given)."""

  name: str

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    workdir: paths.PathLike | None = None,
    bins: Any = None,
    batch_size: int | None = None,
    keep_best_in: paths.PathLike | None = None,
  ):
    del workdir  # results go to the caller; best variables only where `keep_best_in` says
    self._config = config
    self._bins = bins
    self._batch_size = batch_size or config.eval.batch_size
    self._keep_best_in = keep_best_in or None  # '' means none (it always did for best.json)
    self._sets: list[tuple[str, np.ndarray, np.ndarray]] | None = None
    self.details: dict[str, Any] = {}
    self.best: dict[str, dict[str, float]] = self._read_best()

  def sets(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The sets, read once: the config's, or only `bins` when they were given."""
    if self._sets is None:
      if self._bins is None:
        self._sets = load_sets(self._config)
      else:
        self._sets = load_bins(self._bins, self._config.eval.bin_dir, self._config.data.image_size)
    return self._sets

  def score(
    self, embedder: Any, name: str, images: np.ndarray, issame: np.ndarray
  ) -> dict[str, Any]:
    """The protocol's result dict for one set, plus `xnorm`."""
    embeddings, xnorm = extract_embeddings(
      embedder.apply,
      images,
      batch_size=self._batch_size,
      mean=embedder.mean,
      std=embedder.std,
      mesh=embedder.mesh,
    )
    result = verification.evaluate(embeddings, issame, nfolds=self._config.eval.nfolds, name=name)
    result['xnorm'] = xnorm
    return result

  def run(self, embedder: Any, step: int) -> dict[str, float]:
    """Scores every set; returns {'<set>/accuracy': ..., '<set>/std', '<set>/xnorm', ...}."""
    metrics: dict[str, float] = {}
    self.details = {}
    for name, images, issame in self.sets():
      result = self.score(embedder, name, images, issame)
      logging.info('[%s][%d] XNorm: %f', name, step, result['xnorm'])
      logging.info(
        '[%s][%d] Accuracy-Flip: %1.5f+-%1.5f', name, step, result['accuracy'], result['std']
      )
      logging.info(
        '[%s][%d] TAR@FAR=%g: %1.5f+-%1.5f (threshold %.2f)',
        name,
        step,
        result['far_target'],
        result['tar_at_far'],
        result['tar_at_far_std'],
        result['threshold'],
      )
      metrics.update(
        {
          f'{name}/accuracy': result['accuracy'],
          f'{name}/std': result['std'],
          f'{name}/xnorm': result['xnorm'],
          f'{name}/tar_at_far_1e-3': result['tar_at_far'],
        }
      )
      self.details[name] = {
        key: float(result[key])
        for key in (
          'accuracy',
          'std',
          'threshold',
          'tar_at_far',
          'tar_at_far_std',
          'far_target',
          'xnorm',
        )
      }
      self.details[name]['pairs'] = int(len(issame))
      self._keep_if_best(name, result['accuracy'], step, embedder.variables)
    return metrics

  def _best_path(self) -> epath.Path | None:
    return epath.Path(self._keep_best_in) / 'best.json' if self._keep_best_in is not None else None

  def _read_best(self) -> dict[str, dict[str, float]]:
    path = self._best_path()
    if path and path.exists():
      return json.loads(path.read_text())
    return {}

  def _keep_if_best(self, name: str, accuracy: float, step: int, variables: Any) -> None:
    if self._keep_best_in is None:
      return
    previous = self.best.get(name)
    if previous is not None and previous['accuracy'] >= accuracy:
      return
    self.best[name] = {'accuracy': float(accuracy), 'step': int(step)}
    target = paths.resolve(self._keep_best_in) / 'best' / name
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, variables, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    best_path = self._best_path()
    assert best_path is not None  # _keep_best_in is not None here
    if jax.process_index() == 0:
      best_path.write_text(json.dumps(self.best, indent=2))
    logging.info(
      '[%s][%d] new best accuracy %.5f, variables kept in %s', name, step, accuracy, target
    )


# ------------------------------------------------------------------ IJB, identification, test


@register('ijb')
class IJBEvaluator:
  """IJB-B/C 1:1 TAR@FAR (config.eval.ijb.dir, .target); scores and ROC under
  `<workdir>/eval/step_<N>/ijb/` when a workdir is given."""

  name: str

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    workdir: paths.PathLike | None = None,
    dir: str | None = None,  # pylint: disable=redefined-builtin
    target: str | None = None,
    batch_size: int | None = None,
  ):
    options = config.eval.get('ijb', ml_collections.ConfigDict({'dir': '', 'target': 'IJBC'}))
    self._dir = dir or options.dir
    self._target = target or options.target
    if not self._dir:
      raise ConfigError(
        "evaluator 'ijb' needs the IJB-B/C root (meta/, loose_crop/): set "
        '--config.eval.ijb.dir or pass --ijb'
      )
    self._workdir = workdir
    self._batch_size = batch_size or config.eval.batch_size
    self.details: dict[str, Any] = {}

  def run(self, embedder: Any, step: int) -> dict[str, float]:
    from arcface_jax.evaluation import ijb

    out_dir = epath.Path(self._workdir) / 'eval' / f'step_{step}' / 'ijb' if self._workdir else None
    outcome = ijb.evaluate_ijb(
      embed_function(embedder, self._batch_size),
      self._dir,
      self._target,
      out_dir=out_dir,
      image_size=embedder.image_size,
      label=f'step {step}',
    )
    for line in ijb.format_table(outcome['tar_at_far'], outcome['target']).splitlines():
      logging.info('[%s][%d] %s', outcome['target'], step, line)
    metrics = {
      f'{outcome["target"]}/tar_at_far_{far:g}': float(tar)
      for far, tar in outcome['tar_at_far'].items()
    }
    outcome['tar_at_far'] = {f'{k:g}': v for k, v in outcome['tar_at_far'].items()}
    self.details = outcome
    return metrics


@register('identification')
class IdentificationEvaluator:
  """1:N rank-1/rank-5 and DIR@FAR of probe folders against a gallery folder (one sub-folder per
  identity; config.eval.identification.gallery, .probe)."""

  name: str

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    workdir: paths.PathLike | None = None,
    gallery: str | None = None,
    probe: str | None = None,
    batch_size: int | None = None,
  ):
    del workdir
    options = config.eval.get(
      'identification', ml_collections.ConfigDict({'gallery': '', 'probe': ''})
    )
    self._gallery = gallery or options.gallery
    self._probe = probe or options.probe
    if not (self._gallery and self._probe):
      raise ConfigError(
        'identification needs both a gallery and a probe folder: pass --gallery '
        'and --probe, or set --config.eval.identification.gallery and .probe'
      )
    self._batch_size = batch_size or config.eval.batch_size
    self.details: dict[str, Any] = {}

  def run(self, embedder: Any, step: int) -> dict[str, float]:
    from arcface_jax.evaluation import identification

    embed = embed_function(embedder, self._batch_size)
    size = embedder.image_size
    gallery_images, gallery_labels = identification.read_identity_folder(self._gallery, size)
    probe_images, probe_labels = identification.read_identity_folder(self._probe, size)
    outcome = identification.evaluate_identification(
      embed(gallery_images), gallery_labels, embed(probe_images), probe_labels
    )
    logging.info(
      '[identification][%d] rank-1 %.5f rank-5 %.5f (%d mated, %d non-mated probes, %d identities)',
      step,
      outcome['rank1'],
      outcome['rank5'],
      outcome['num_mated'],
      outcome['num_nonmated'],
      outcome['num_identities'],
    )
    metrics = {
      'identification/rank1': float(outcome['rank1']),
      'identification/rank5': float(outcome['rank5']),
    }
    for far, entry in outcome.get('dir_at_far', {}).items():
      logging.info('[identification][%d] DIR@FAR=%g: %.5f', step, far, entry['dir'])
      metrics[f'identification/dir_at_far_{far:g}'] = float(entry['dir'])
    if 'dir_at_far' in outcome:
      outcome['dir_at_far'] = {f'{k:g}': v for k, v in outcome['dir_at_far'].items()}
    self.details = outcome
    return metrics


@register('test', command_only='reads the classifier head from a saved checkpoint')
class ClosedSetEvaluator:
  """Closed-set top-1 on the run's test split (folder runs with data.split_by=image and
  data.test_fraction > 0): of the classifier head and of the nearest class centre."""

  name: str

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    workdir: paths.PathLike | None = None,
    batch_size: int | None = None,
  ):
    from arcface_jax.evaluation import closed_set

    if workdir is None:
      raise ValueError('--test reads the classifier head from a training run: pass its --workdir')
    closed_set.require_test_split(config)
    self._config = config
    self._workdir = workdir
    self._batch_size = batch_size or config.eval.batch_size
    self.details: dict[str, Any] = {}

  def run(self, embedder: Any, step: int) -> dict[str, float]:
    from arcface_jax.evaluation import closed_set

    embed = embed_function(embedder, self._batch_size, flip=False)
    outcome = closed_set.evaluate_test_split(embed, self._config, self._workdir, step)
    logging.info(
      '[test][%d] top-1 classifier head %s, nearest class centre %.5f (%d photos, %d classes)',
      step,
      f'{outcome["head_top1"]:.5f}' if 'head_top1' in outcome else 'n/a (no head)',
      outcome['nearest_centre_top1'],
      outcome['images'],
      outcome['classes'],
    )
    self.details = outcome
    return {
      f'test/{key}': float(outcome[key])
      for key in ('head_top1', 'nearest_centre_top1')
      if key in outcome
    }
