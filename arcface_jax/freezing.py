"""The forward side of frozen layers (config.train.freeze / freeze_batch_stats).

The optimizer leaves frozen parameters untouched (`optim.make_optimizer`); this module makes the
step itself cheaper and, on request, freezes batch-norm statistics:
- frozen backbone parameters pass through `jax.lax.stop_gradient`, so no gradient flows back
  through a frozen trunk and XLA drops that part of the backward pass (their gradients are zero);
- with `freeze_batch_stats`, a BatchNorm whose parameters are all frozen runs in eval mode: it
  normalises with its running statistics and does not update them. That is the sound choice for
  fine-tuning (training-mode normalisation with statistics that never move would make training
  and inference disagree), and it leaves the statistics bit-identical.
A BatchNorm without parameters counts as frozen when a freeze expression matches its statistics'
path (`backbone/<module path>/mean`).
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from arcface_jax import optim


class FrozenLayersModel:
  """`model` for the train step, with frozen parameters cut from the gradient.

  Only `init` and `apply` are used by the train step; other attributes come from `model`.
  """

  def __init__(self, model: nn.Module, frozen_params: set[str], frozen_norms: set[tuple[str, ...]]):
    self.model = model
    self.frozen_params = frozen_params  # paths inside the backbone's params, 'A/B/kernel'
    self.frozen_norms = frozen_norms  # module paths of BatchNorms kept in eval mode

  def __getattr__(self, name: str) -> Any:
    return getattr(self.model, name)

  def init(self, *args: Any, **kwargs: Any) -> Any:
    return self.model.init(*args, **kwargs)

  def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
    variables = dict(variables)

    def cut(path, leaf):
      return jax.lax.stop_gradient(leaf) if optim.path_string(path) in self.frozen_params else leaf

    variables['params'] = jax.tree_util.tree_map_with_path(cut, variables['params'])
    if not self.frozen_norms:
      return self.model.apply(variables, *args, **kwargs)
    with nn.intercept_methods(self._eval_mode_norms):
      return self.model.apply(variables, *args, **kwargs)

  def _eval_mode_norms(self, next_fun, args, kwargs, context):
    module = context.module
    if (
      context.method_name == '__call__'
      and isinstance(module, nn.BatchNorm)
      and tuple(module.path) in self.frozen_norms
      and not module.use_running_average
    ):
      # Flax refuses use_running_average at both construction and call time, and the models
      # construct it; this instance is created afresh by its parent on every call, so switching
      # the field for the duration of this call affects nothing else.
      object.__setattr__(module, 'use_running_average', True)
      try:
        return next_fun(*args, **kwargs)
      finally:
        object.__setattr__(module, 'use_running_average', False)
    return next_fun(*args, **kwargs)


def frozen_norm_paths(
  train_config: ml_collections.ConfigDict, backbone_params: Any, batch_stats: Any, frozen: set[str]
) -> set[tuple[str, ...]]:
  """Module paths of the BatchNorms whose parameters (or, lacking any, statistics) are frozen."""
  norms = {
    tuple(optim.path_string(p).split('/')[:-1])
    for p, _ in jax.tree_util.tree_flatten_with_path(batch_stats)[0]
  }
  params_of: dict[tuple[str, ...], list[str]] = {}
  for path in optim.param_paths(backbone_params):
    parts = tuple(path.split('/'))
    params_of.setdefault(parts[:-1], []).append(path)
  chosen = set()
  for norm in norms:
    own = params_of.get(norm, [])
    if own:
      if all(p in frozen for p in own):
        chosen.add(norm)
    elif any(re.search(e, 'backbone/' + '/'.join(norm) + '/mean') for e in train_config.freeze):
      chosen.add(norm)
  return chosen


def for_training(
  model: nn.Module,
  train_config: ml_collections.ConfigDict,
  abstract_params: Any,
  abstract_batch_stats: Any,
) -> Any:
  """`model` itself when nothing is frozen, else the `FrozenLayersModel` the train step uses."""
  if not train_config.freeze:
    return model
  frozen = optim.frozen_paths(train_config, abstract_params)
  backbone = {p.partition('/')[2] for p in frozen if p.startswith('backbone/')}
  norms = (
    frozen_norm_paths(train_config, abstract_params['backbone'], abstract_batch_stats, backbone)
    if train_config.freeze_batch_stats
    else set()
  )
  return FrozenLayersModel(model, backbone, norms)
