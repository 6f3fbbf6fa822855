"""The `test` evaluator: closed-set top-1 on the run's test split through
`arcface_jax.evaluation.closed_set`; `evaluate` only, since it reads the classifier head from a
saved checkpoint."""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging

from arcface_jax import paths
from arcface_jax.evaluation.registry import embed_function, register


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
