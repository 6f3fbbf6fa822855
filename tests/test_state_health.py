"""state_health.problems: what it flags in a state, and what it leaves alone."""

import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import state_health


def _group(value, dtype=jnp.float32):
  return {'a': jnp.ones((3, 4), dtype), 'b': {'c': jnp.array([0.5, value, -2.0], dtype)}}


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_named_in_bounded_and_unbounded_groups(bad):
  found = state_health.problems(
    {'params': _group(bad), 'opt_state': _group(bad), 'fine': _group(1.0)}, bounded=('params',)
  )
  assert sorted(found) == ['opt_state: not finite (NaN or Inf)', 'params: not finite (NaN or Inf)']


def test_a_value_past_the_limit_counts_only_in_bounded_groups():
  big = -3 * state_health.MAGNITUDE_LIMIT  # its magnitude is what counts
  found = state_health.problems(
    {'params': _group(big), 'opt_state': _group(big)}, bounded=('params',)
  )
  assert found == ['params: largest value 3e+10 (> 1e+10: the weights or statistics have blown up)']
  assert (
    state_health.problems(
      {'params': _group(0.9 * state_health.MAGNITUDE_LIMIT)}, bounded=('params',)
    )
    == []
  )


def test_empty_groups_integers_and_bfloat16():
  groups = {
    'empty': {},
    'no floats': {'count': jnp.array([1, 2], jnp.int32)},
    'zero size': {'x': jnp.zeros((0, 3))},
    'bf16': _group(np.nan, jnp.bfloat16),
  }
  assert state_health.problems(groups, bounded=tuple(groups)) == ['bf16: not finite (NaN or Inf)']
