"""Learning-rate schedules and the SGD optimizer of the face-recognition recipes.

`from_config(config)` builds both (`Optimizer(tx, schedule)`) from config.train and config.head.

The paper divides the rate by 10 at fixed steps; the current reference trainer warms up linearly
and then decays polynomially to zero, stepped every iteration. Weight decay is coupled (added to the
gradient before momentum, as torch.optim.SGD does) and applies to every trained parameter, as in
the reference; gradient-norm clipping applies to the trained backbone parameters only.

The base learning rate, the momentum and the weight decay are runtime values held in the
optimizer state (`RuntimeHyperparamsState.hyperparams`), not constants of the compiled step: runs
that differ only in them (the cells of `arcface_jax.search`) share one compiled program. The
schedule's shape (boundaries, warm-up, decay) stays part of the program.

Transfer learning (config.train):
- `freeze`: regular expressions, `re.search`ed on '/'-joined paths of the train state's params,
  which start with `backbone/` (the Flax module path, e.g. `backbone/IBasicBlock_0/Conv_0/kernel`)
  or `head/` (e.g. `head/weight`). Matching parameters get `optax.set_to_zero()`: no optimizer
  state, no weight decay, and their values stay bit-identical.
- `lr_multipliers`: 'REGEX=FACTOR' strings; a trained parameter's rate is the base rate times the
  factor of the first expression that matches it (1 when none does).
Each group is one branch of `optax.multi_transform`. An expression that matches no parameter is a
`PatternError` naming it.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from arcface_jax.parallel import lazy

SCHEDULES = ('step', 'warmup_poly')
HYPERPARAMS = ('learning_rate', 'momentum', 'weight_decay')
FROZEN = 'frozen'


class PatternError(ValueError):
  """A freeze / lr_multipliers expression that is malformed or matches no parameter."""


def make_schedule(
  train_config: ml_collections.ConfigDict, base: float | None = None
) -> optax.Schedule:
  """The learning rate as a function of the step (`base` replaces config's learning_rate)."""
  base = float(train_config.learning_rate if base is None else base)
  if train_config.schedule == 'step':
    boundaries = {int(b): float(train_config.lr_decay_factor) for b in train_config.lr_boundaries}
    return optax.piecewise_constant_schedule(base, boundaries)
  if train_config.schedule == 'warmup_poly':
    warmup = int(train_config.warmup_steps)
    decay_steps = max(int(train_config.num_steps) - warmup, 1)
    decay = optax.polynomial_schedule(base, 0.0, float(train_config.poly_power), decay_steps)
    if warmup == 0:
      return decay
    ramp = optax.linear_schedule(0.0, base, warmup)
    return optax.join_schedules([ramp, decay], [warmup])
  raise ValueError(f'config.train.schedule={train_config.schedule!r}: expected one of {SCHEDULES}')


# ---------------------------------------------------------------- parameter paths and groups


def path_string(path: tuple[Any, ...]) -> str:
  """A key path of jax.tree_util as 'backbone/IBasicBlock_0/Conv_0/kernel'."""
  parts = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def param_paths(params: Any) -> list[str]:
  """Every leaf path of `params` in tree order."""
  return [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _compile(expression: str, key: str) -> re.Pattern:
  try:
    return re.compile(expression)
  except re.error as e:
    raise PatternError(f'{key}: {expression!r} is not a valid regular expression ({e})') from None


def parse_multipliers(entries: Any) -> list[tuple[str, float]]:
  """config.train.lr_multipliers ('REGEX=FACTOR' strings) → [(regex, factor)] in order."""
  parsed = []
  for entry in entries:
    expression, sep, factor = str(entry).rpartition('=')
    try:
      value = float(factor)
    except ValueError:
      value = None
    if not sep or not expression or value is None or value < 0:
      raise PatternError(
        f'config.train.lr_multipliers: {entry!r} is not REGEX=FACTOR with a '
        "factor >= 0, e.g. '^head/=10'"
      )
    _compile(expression, 'config.train.lr_multipliers')
    parsed.append((expression, value))
  return parsed


def group_labels(train_config: ml_collections.ConfigDict, paths: list[str]) -> list[str]:
  """One label per path: FROZEN, or 'x<factor>' of the first matching multiplier ('x1' if none).

  PatternError names any expression that matches none of `paths`.
  """
  freeze = [(e, _compile(e, 'config.train.freeze')) for e in train_config.freeze]
  multipliers = [
    (e, f, _compile(e, 'config.train.lr_multipliers'))
    for e, f in parse_multipliers(train_config.lr_multipliers)
  ]
  used: set[str] = set()
  labels = []
  for path in paths:
    hits = [e for e, pattern in freeze if pattern.search(path)]
    used.update(hits)
    if hits:
      labels.append(FROZEN)
      continue
    factor = 1.0
    for expression, value, pattern in multipliers:
      if pattern.search(path):
        used.add(expression)
        factor = value
        break
    labels.append(f'x{factor!r}')
  for key, expressions in (
    ('freeze', [e for e, _ in freeze]),
    ('lr_multipliers', [e for e, _, _ in multipliers]),
  ):
    for expression in expressions:
      if expression not in used:
        # A multiplier shadowed by an earlier one for every path it matches also lands here.
        shadowed = ' not frozen or matched by an earlier expression' if key != 'freeze' else ''
        raise PatternError(
          f'config.train.{key}: {expression!r} matches no parameter{shadowed} (paths look '
          f'like {paths[0]!r}, {paths[-1]!r}; they start with backbone/ or head/)'
        )
  return labels


def frozen_paths(train_config: ml_collections.ConfigDict, params: Any) -> set[str]:
  """The '/'-joined paths of the parameters `config.train.freeze` matches."""
  paths = param_paths(params)
  return {p for p, label in zip(paths, group_labels(train_config, paths)) if label == FROZEN}


# ---------------------------------------------------------------- runtime hyperparameters


class RuntimeHyperparamsState(NamedTuple):
  # int32 updates applied (indexes the schedule). The field shadows tuple.count, as in optax's
  # states; its name is a key of saved optimizer states, so it stays.
  count: jax.Array  # type: ignore[assignment]
  hyperparams: dict[str, jax.Array]  # float32 scalars: learning_rate (base), momentum, weight_decay
  learning_rate: jax.Array  # float32: the rate the next update applies (base × schedule shape)
  inner_state: Any


def _with_runtime_hyperparams(
  build: Callable[..., optax.GradientTransformation],
  shape: optax.Schedule,
  values: dict[str, float],
) -> optax.GradientTransformation:
  """`build(learning_rate=, momentum=, weight_decay=)` with those values carried in the state.

  `shape` is the schedule of a unit base rate; the rate of update `count` is
  hyperparams['learning_rate'] × shape(count). `build` must give the same state structure for any
  values (it is called again inside every update with traced ones).
  """

  def init(params):
    hyper = {k: jnp.asarray(values[k], jnp.float32) for k in HYPERPARAMS}
    rate = hyper['learning_rate'] * shape(0)
    return RuntimeHyperparamsState(
      count=jnp.zeros((), jnp.int32),
      hyperparams=hyper,
      learning_rate=jnp.asarray(rate, jnp.float32),
      inner_state=build(**hyper).init(params),
    )

  def update(updates, state, params=None):
    hyper = state.hyperparams
    rate = hyper['learning_rate'] * shape(state.count)
    inner = build(
      learning_rate=rate, momentum=hyper['momentum'], weight_decay=hyper['weight_decay']
    )
    updates, inner_state = inner.update(updates, state.inner_state, params)
    count = optax.safe_int32_increment(state.count)
    return updates, RuntimeHyperparamsState(
      count=count,
      hyperparams=hyper,
      learning_rate=jnp.asarray(hyper['learning_rate'] * shape(count), jnp.float32),
      inner_state=inner_state,
    )

  return optax.GradientTransformation(init, update)


def set_hyperparams(opt_state: Any, train_config: ml_collections.ConfigDict) -> Any:
  """`opt_state` with config's learning rate, momentum and weight decay (e.g. after a restore).

  The new values keep each old value's sharding; the current rate follows the new base.
  """
  if not isinstance(opt_state, RuntimeHyperparamsState):
    raise TypeError('set_hyperparams needs the state of make_optimizer()')
  old = opt_state.hyperparams
  wanted = {k: np.float32(train_config[k]) for k in HYPERPARAMS}
  if all(np.asarray(jax.device_get(old[k])) == wanted[k] for k in HYPERPARAMS):
    return opt_state  # unchanged: keep the state bit for bit
  put = lambda value, like: jax.device_put(jnp.asarray(value, jnp.float32), like.sharding)
  hyper = {k: put(wanted[k], old[k]) for k in HYPERPARAMS}
  rate = make_schedule(train_config)(int(jax.device_get(opt_state.count)))
  return opt_state._replace(hyperparams=hyper, learning_rate=put(rate, opt_state.learning_rate))


def applied_learning_rate(opt_state: Any) -> jax.Array | None:
  """The rate the next update of `make_optimizer`'s state applies (None for other states)."""
  if isinstance(opt_state, RuntimeHyperparamsState):
    return opt_state.learning_rate
  return None


# ---------------------------------------------------------------- the optimizer


def make_optimizer(
  train_config: ml_collections.ConfigDict, *, lazy_head: bool = False
) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay over params {'backbone': ..., 'head': ...}.

  The rate is config's learning_rate × the shape of `make_schedule`, frozen parameters and
  lr multipliers as config.train.freeze / lr_multipliers say (module docstring).

  lazy_head (config.head.lazy_update with the model-parallel head): the head's centres get the
  same SGD, but only on rows with a non-zero gradient — Partial FC's sampled centres — so
  unsampled centres keep their value and momentum (parallel/lazy.py).
  """
  shape = make_schedule(train_config, base=1.0)
  clip = float(train_config.clip_grad_norm)
  freeze = tuple(train_config.freeze)
  multipliers = parse_multipliers(train_config.lr_multipliers)
  transfer = bool(freeze or multipliers)

  def labels_of(params):
    paths = param_paths(params)
    flat = group_labels(train_config, paths)
    if lazy_head:
      flat = [
        label if label == FROZEN or not path.startswith('head/') else 'lazy' + label
        for path, label in zip(paths, flat)
      ]
    return jax.tree.unflatten(jax.tree.structure(params), flat)

  def dense(rate, momentum, weight_decay):
    # Coupled decay (torch.optim.SGD); momentum always traced so the state is the same for any
    # value (a momentum of 0 leaves the trace equal to the gradient, i.e. plain SGD).
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(rate, momentum=momentum))

  def build(learning_rate, momentum, weight_decay):
    if not transfer and not lazy_head:
      parts = []
      if clip > 0:
        only_backbone = lambda params: {k: k == 'backbone' for k in params}
        parts.append(optax.masked(optax.clip_by_global_norm(clip), only_backbone))
      return optax.chain(*parts, dense(learning_rate, momentum, weight_decay))
    groups = {FROZEN: optax.set_to_zero()}
    for factor in {1.0, *[f for _, f in multipliers]}:
      groups[f'x{factor!r}'] = dense(learning_rate * factor, momentum, weight_decay)
      if lazy_head:
        groups[f'lazyx{factor!r}'] = lazy.lazy_sgd(
          learning_rate * factor, momentum=momentum, weight_decay=weight_decay
        )
    parts = []
    if clip > 0:
      # Clipping sees only the trained backbone parameters: frozen gradients must not count.
      def trained_backbone(params):
        return jax.tree.map(lambda label: label != FROZEN, labels_of(params)) | {
          'head': jax.tree.map(lambda _: False, params['head'])
        }

      parts.append(optax.masked(optax.clip_by_global_norm(clip), trained_backbone))
    return optax.chain(*parts, optax.multi_transform(groups, labels_of))

  values = {k: float(train_config[k]) for k in HYPERPARAMS}
  return _with_runtime_hyperparams(build, shape, values)


class Optimizer(NamedTuple):
  """What `from_config` builds: the update rule and the learning-rate schedule it follows."""

  tx: optax.GradientTransformation
  schedule: optax.Schedule


def from_config(config: ml_collections.ConfigDict) -> Optimizer:
  """The optimizer of a whole config: config.train, with the lazy head update when the head is
  model-parallel and config.head.lazy_update is set. Freeze / lr-multiplier expressions are
  matched against the parameters at `tx.init`, which raises `PatternError` for a bad one."""
  lazy_head = bool(config.head.model_parallel and config.head.lazy_update)
  return Optimizer(
    tx=make_optimizer(config.train, lazy_head=lazy_head), schedule=make_schedule(config.train)
  )
