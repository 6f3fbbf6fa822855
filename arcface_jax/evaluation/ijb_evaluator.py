"""The `ijb` evaluator: IJB-B/C 1:1 TAR@FAR (config.eval.ijb.dir, .target) through
`arcface_jax.evaluation.ijb`, with scores and ROC under `<workdir>/eval/step_<N>/ijb/`."""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging
from etils import epath

from arcface_jax import paths
from arcface_jax.config_checks import ConfigError
from arcface_jax.evaluation.registry import embed_function, register


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
