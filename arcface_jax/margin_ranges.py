"""Valid ranges of the margin parameters, checked by `margins.get` before a margin is built.

A margin outside its range still trains, but learns nothing or the wrong thing (ArcFace m = 4:
loss 0 at once, chance accuracy; a negative margin: a bonus that makes the task easier). Each
check raises `MarginRangeError`, a ValueError carrying the offending argument's name, so the
config layer (arcface_jax.config_checks) can name its own key. Why each range is what it is is
said beside each check.
"""

from __future__ import annotations

import math
from typing import Any


class MarginRangeError(ValueError):
  """A margin parameter outside the range in which the loss still asks for a margin.

  `parameter` is the argument of `get` that holds the value ('s', 'm', 'm1', 'lambda_min', ...),
  so a config layer can name its own key.
  """

  def __init__(self, parameter: str, message: str):
    super().__init__(message)
    self.parameter = parameter


def _require(ok: bool, parameter: str, message: str) -> None:
  if not ok:
    raise MarginRangeError(parameter, message)


def check_scale(name: str, s: float) -> None:
  # Logits are s·cos θ: s = 0 makes every class equally likely whatever the features (nothing is
  # learnt) and s < 0 rewards pointing away from the own class centre.
  _require(math.isfinite(s) and s > 0, 's', f'{name}: scale s={s} must be positive (paper: 64)')


def check_combined(name: str, m1: float, m2: float, m3: float, given_as: dict[str, str]) -> None:
  """Valid ranges of cos(m1·θ + m2) − m3 (norm_softmax, cosface, arcface, combined).

  m1 > 0: at m1 = 0 the target logit is the constant cos m2 − m3 (no gradient reaches the features),
    m1 < 0 rewards a larger angle.
  m2 in [0, π/2): m2 < 0 is a bonus, not a margin; at m2 ≥ π/2 even a feature lying on its own
    centre (θ = 0) scores cos m2 ≤ 0, no more than a class orthogonal to it, so the margin can never
    be met; and m2 > π turns the fallback cos θ − m2·sin m2 into cos θ plus a bonus (arcface m = 4:
    loss 0 at once, chance accuracy).
  m3 in [0, 1): m3 < 0 is a bonus; at m3 ≥ 1 a feature on its own centre still scores below a class
    orthogonal to it — CosFace's bound m ≤ C/(C − 1) (Wang et al. 2018, §3.3) tends to 1 with
    thousands of classes.
  Together: cos m2 − m3 > 0 (a feature on its centre must be able to win), and the curve must never
    rise above cos θ (m1 < 1 alone would reward larger angles, as m1 = 0.9 does unless m2, m3 make
    up for it, as CM2 does).
  """

  def arg(key: str) -> str:  # the config key the user wrote (e.g. `m` for CosFace's m3)
    return given_as.get(key, key)

  _require(
    math.isfinite(m1) and m1 > 0,
    arg('m1'),
    f'{name}: multiplicative margin {arg("m1")}={m1} must be positive (1 = none, '
    'SphereFace 1.35); at 0 the target logit is a constant and nothing is learnt',
  )
  _require(
    math.isfinite(m2) and 0 <= m2 < math.pi / 2,
    arg('m2'),
    f'{name}: additive angular margin {arg("m2")}={m2} must lie in [0, π/2) (paper: 0.5); '
    'a negative one is a bonus, and from π/2 on not even a feature on its own class centre '
    'can meet it (beyond π the loss is 0 at once and nothing is learnt)',
  )
  _require(
    math.isfinite(m3) and 0 <= m3 < 1,
    arg('m3'),
    f'{name}: additive cosine margin {arg("m3")}={m3} must lie in [0, 1) (paper: 0.35); a '
    'negative one is a bonus, and from 1 on a feature on its own class centre still scores '
    'below a class orthogonal to it',
  )
  _require(
    math.cos(m2) - m3 > 0,
    arg('m3'),
    f'{name}: m2={m2} and m3={m3} together leave a feature on its own class centre a target '
    f'cosine of cos(m2) − m3 = {math.cos(m2) - m3:.3f} ≤ 0; lower them so cos(m2) > m3',
  )
  if m1 < 1:  # with m1 ≥ 1, m2, m3 ≥ 0 the curve is below cos θ by construction
    theta = [math.pi * i / 2048 for i in range(2049)]
    reach = min(math.pi, (math.pi - m2) / m1)  # past θ0 the fallback stays below cos θ
    worst = max(math.cos(m1 * t + m2) - m3 - math.cos(t) for t in theta if t <= reach)
    _require(
      worst <= 1e-12,
      arg('m1'),
      f'{name}: m1={m1} < 1 with m2={m2}, m3={m3} rewards large angles (the target logit '
      f'exceeds cos θ by up to {worst:.3f}); raise m1 towards 1 or m2/m3 (CM2: 0.9, 0.4, '
      '0.15)',
    )


def check_sphereface(params: dict[str, Any]) -> None:
  """A-softmax: an integer m ≥ 1 (ψ is piecewise in kπ/m), and a blend weight λ ≥ 0 — the blend
  divides by 1 + λ, so λ = −1 divides by zero and λ < 0 flips the target's sign."""
  m = params.get('m', 4)
  _require(
    m == int(m) and m >= 1,
    'm',
    f'sphereface (A-softmax) needs an integer margin m >= 1, got {m}; the paper\'s '
    'real-valued SphereFace 1.35 is combined with m1=1.35',
  )
  if 'scale' in params:
    check_scale('sphereface', params['scale'])
  for key in ('lambda_base', 'lambda_min', 'lambda_gamma', 'lambda_power'):
    if key in params:
      value = params[key]
      _require(
        math.isfinite(value) and value >= 0,
        key,
        f'sphereface: {key}={value} must be >= 0 (the softmax blend weight λ = max(min, '
        'base·(1 + gamma·step)^−power) must stay non-negative)',
      )
