"""Lazy SGD for Partial FC centres: only the centres used in a step get momentum and decay.

With Partial FC most centres take no part in a step and their gradient rows are exactly zero.
Dense SGD (the reference, optim.make_optimizer's default) still decays them and keeps moving them
along their momentum; `lazy_sgd` leaves such rows — parameter and momentum — untouched, as if the
sampled sub-matrix had been optimised on its own (Partial FC v1's sparse update).

A row is "used" when its gradient row is not all zero. For Partial FC that is exactly the sampled
centres: every sampled centre receives the softmax probability of its column, which is positive
(a row whose gradient is exactly zero would not move under SGD either, bar decay and momentum).
For used rows the update is torch.optim.SGD's with coupled weight decay, identical to the dense
chain add_decayed_weights → sgd(momentum), so lazy and dense agree when every row is used.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class LazySgdState(NamedTuple):
  # int32 steps taken (indexes the learning-rate schedule). The field shadows tuple.count, as in
  # optax's states; its name is a key of saved optimizer states, so it stays.
  count: jax.Array  # type: ignore[assignment]
  trace: Any  # momentum buffers, one per parameter


def used_rows(grad: jax.Array) -> jax.Array:
  """Boolean mask broadcastable against `grad`: rows (leading index) with any non-zero entry."""
  if grad.ndim == 0:
    return jnp.asarray(True)
  used = jnp.any(grad != 0, axis=tuple(range(1, grad.ndim)))
  return used.reshape(used.shape + (1,) * (grad.ndim - 1))


def lazy_sgd(
  learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9, weight_decay: float = 0.0
) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay applied only to rows with a non-zero gradient."""

  def init(params):
    return LazySgdState(count=jnp.zeros((), jnp.int32), trace=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    # momentum and weight_decay may be traced (runtime hyperparameters): no Python branching on
    # their values; a zero momentum or decay computes the same as leaving the term out.
    if params is None and isinstance(weight_decay, (int, float)) and weight_decay:
      raise ValueError('lazy_sgd with weight_decay needs params in update()')
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def one(g, buf, p):
      used = used_rows(g)
      g = g + weight_decay * p
      new_buf = momentum * buf + g
      new_buf = jnp.where(used, new_buf, buf)
      return jnp.where(used, -lr * new_buf, 0.0).astype(g.dtype), new_buf

    ps = params if params is not None else jax.tree.map(jnp.zeros_like, updates)
    pairs = jax.tree.map(one, updates, state.trace, ps)
    new_updates = jax.tree.map(lambda _, pair: pair[0], updates, pairs)
    new_trace = jax.tree.map(lambda _, pair: pair[1], updates, pairs)
    return new_updates, LazySgdState(count=optax.safe_int32_increment(state.count), trace=new_trace)

  return optax.GradientTransformation(init, update)
