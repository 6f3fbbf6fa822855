"""The `identification` evaluator: 1:N rank-1/rank-5 and DIR@FAR of probe folders against a
gallery folder (config.eval.identification.gallery, .probe) through
`arcface_jax.evaluation.identification`."""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging

from arcface_jax import paths
from arcface_jax.config_checks import ConfigError
from arcface_jax.evaluation.registry import embed_function, register


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
