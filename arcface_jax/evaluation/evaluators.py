"""Verification during training, chosen by `config.eval`.

Each named set is loaded once (held-out synthetic pairs, pairs from the val split of a folder or
TFDS dataset, or `.bin` files by name or path), embedded with flip-sum across the mesh, scored with
the 10-fold protocol, logged in the reference format `[lfw][step] Accuracy-Flip: 0.99817+-0.00229`,
and tracked: the backbone variables of the best step per set are kept under `workdir/best/<set>/`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from arcface_jax import paths
from arcface_jax.evaluation import verification
from arcface_jax.evaluation.extract import extract_embeddings

SYNTHETIC_SET = 'synthetic_heldout'
VAL_SET = 'val'  # pairs from the val split of the training dataset


def resolve_bin(name_or_path: str, bin_dir: str) -> str:
  """`lfw` → <bin_dir>/lfw.bin; anything ending in .bin is taken as a path."""
  path = name_or_path if name_or_path.endswith('.bin') else os.path.join(bin_dir,
                                                                        name_or_path + '.bin')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'verification set {name_or_path!r}: {path} does not exist; put the .bin file there, set '
        '--config.eval.bin_dir, or remove it from config.eval.bins')
  return path


def load_sets(config: ml_collections.ConfigDict) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """(name, images uint8 (2N, S, S, 3), issame (N,)) for every set the config names."""
  sets = []
  size = config.data.image_size
  if config.eval.synthetic_pairs:
    from arcface_jax.data import synthetic
    images, issame = synthetic.synthetic_verification_pairs(
        config.data.synthetic_variant, config.data.data_dir, config.eval.synthetic_pairs,
        image_size=size)
    sets.append((SYNTHETIC_SET, images, issame))
  if config.eval.val_pairs:
    from arcface_jax.data import pairs, sources
    source = sources.get_source(config.data, 'val')
    images, issame = pairs.verification_pairs(source, sources.source_labels(source),
                                              config.eval.val_pairs, seed=config.data.split_seed,
                                              image_size=size)
    sets.append((VAL_SET, images, issame))
  for entry in config.eval.bins:
    from arcface_jax.data.verification_bin import load_bin
    path = resolve_bin(entry, config.eval.bin_dir)
    name = os.path.splitext(os.path.basename(path))[0]
    images, issame = load_bin(path, image_size=(size, size))
    sets.append((name, images, issame))
  return sets


class Evaluator:
  """Runs every configured verification set on given backbone variables."""

  def __init__(self, config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh,
               embed_fn: Callable[[Any, jax.Array], jax.Array],
               workdir: paths.PathLike | None = None):
    self._config = config
    self._mesh = mesh
    self._embed = jax.jit(embed_fn)
    self._workdir = workdir
    self._sets: list[tuple[str, np.ndarray, np.ndarray]] | None = None
    self.best: dict[str, dict[str, float]] = self._read_best()

  def _best_path(self) -> epath.Path | None:
    return epath.Path(self._workdir) / 'best.json' if self._workdir else None

  def _read_best(self) -> dict[str, dict[str, float]]:
    path = self._best_path()
    if path and path.exists():
      return json.loads(path.read_text())
    return {}

  def evaluate_set(self, variables: Any, images: np.ndarray,
                   issame: np.ndarray) -> dict[str, Any]:
    """The protocol's result dict for one set, plus `xnorm`."""
    apply = lambda batch: self._embed(variables, batch)
    embeddings, xnorm = extract_embeddings(
        apply, images, batch_size=self._config.eval.batch_size, mean=self._config.data.mean,
        std=self._config.data.std, mesh=self._mesh)
    result = verification.evaluate(embeddings, issame, nfolds=self._config.eval.nfolds)
    result['xnorm'] = xnorm
    return result

  def run(self, variables: Any, step: int) -> dict[str, float]:
    """Evaluates every set; returns flat scalars {'<set>/accuracy': ..., ...} for logging."""
    if self._sets is None:
      self._sets = load_sets(self._config)
    scalars = {}
    for name, images, issame in self._sets:
      result = self.evaluate_set(variables, images, issame)
      logging.info('[%s][%d] XNorm: %f', name, step, result['xnorm'])
      logging.info('[%s][%d] Accuracy-Flip: %1.5f+-%1.5f', name, step, result['accuracy'],
                   result['std'])
      scalars.update({f'{name}/accuracy': result['accuracy'], f'{name}/std': result['std'],
                      f'{name}/xnorm': result['xnorm'],
                      f'{name}/tar_at_far_1e-3': result['tar_at_far']})
      self._keep_if_best(name, result['accuracy'], step, variables)
    return scalars

  def _keep_if_best(self, name: str, accuracy: float, step: int, variables: Any) -> None:
    if self._workdir is None:
      return
    previous = self.best.get(name)
    if previous is not None and previous['accuracy'] >= accuracy:
      return
    self.best[name] = {'accuracy': float(accuracy), 'step': int(step)}
    target = paths.resolve(self._workdir) / 'best' / name
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, variables, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
      self._best_path().write_text(json.dumps(self.best, indent=2))
    logging.info('[%s][%d] new best accuracy %.5f, variables kept in %s', name, step, accuracy,
                 target)
