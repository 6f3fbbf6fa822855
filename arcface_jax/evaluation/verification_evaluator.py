"""The `verification` evaluator: the 10-fold protocol on the configured sets (held-out synthetic
pairs, val-split pairs, `.bin` files), logged in the reference format, with the best step's
backbone variables per set kept under `workdir/best/<set>/` and the scores in `workdir/best.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from arcface_jax import paths
from arcface_jax.evaluation import verification
from arcface_jax.evaluation.extract import extract_embeddings
from arcface_jax.evaluation.registry import register

SYNTHETIC_SET = 'synthetic_heldout'
VAL_SET = 'val'  # pairs from the val split of the training dataset


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
