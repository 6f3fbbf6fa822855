"""The evaluator registry's machinery: the `Evaluator` interface, `register`, lookup by name and
the trainer's periodic set (`for_training`), and `embed_function` the evaluators share.

The evaluators themselves live one module per kind (`verification_evaluator`, `ijb_evaluator`,
`identification_evaluator`, `closed_set_evaluator`) and register here when imported; import
`arcface_jax.evaluation.evaluators`, which imports them all, to look one up by name.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import ml_collections
import numpy as np

from arcface_jax import paths
from arcface_jax.config_checks import ConfigError
from arcface_jax.evaluation.extract import extract_embeddings

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
