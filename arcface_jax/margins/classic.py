"""The ArcFace paper's margins (wave 1): the target logit as a function of cos θ, and the helpers
every margin shares.

A margin `mg` maps cosines (B, C) and integer labels (B,) to scaled logits (B, C): the target
column gets the margin's curve, every other column stays s·cos θ_j, and a row whose label is −1 (a
model-parallel shard that does not own the row's class) is only scaled. `mg.target_logit(theta)`
is the same curve, unscaled, as a function of the angle; analysis figures draw it from here.

  norm_softmax   cos θ                         CombinedMargin(m1=1, m2=0, m3=0)
  cosface        cos θ − m                     CombinedMargin(m3=m), m = 0.35
  arcface        cos(θ + m)                    CombinedMargin(m2=m), m = 0.5
  combined       cos(m1·θ + m2) − m3           CM1 = (1, 0.3, 0.2) is the default; CM2 = (0.9, 0.4, 0.15)
  sphereface     A-softmax ψ(θ), integer m = 4, on un-normalised features (SphereFaceMargin)

The paper's "SphereFace 1.35" row is the real-valued multiplicative margin inside the combined
form: `get('combined', m1=1.35, m2=0, m3=0)`. Plain softmax (an unnormalised FC layer with a bias)
is not a margin but a head option: `losses.build_objective` handles loss.name='softmax', and
`get('softmax')` raises a ValueError saying so. These margins are stateless: `init_state()` is {}
and `apply(cos, labels, state=..)` is `mg(cos, labels)` (see arcface_jax.margins for the protocol).

Numerics: everything is computed in float32 (float64 inputs stay float64); the margin curves are
evaluated on the gathered target cosines only (B values, not B×C), and never through an arccos
whose derivative is infinite at ±1, so value and gradient are finite on all of [−1, 1].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp

# Floor on sin²θ in derivatives only: d sinθ / d cosθ = −cosθ / sinθ and d arccos = −1 / sinθ are
# infinite at cos θ = ±1; flooring sin²θ at 1e-10 caps them at 1e5 while values stay exact.
_SIN2_FLOOR = 1e-10


class Margin(Protocol):
  """What every margin offers (the protocol is described in arcface_jax.margins)."""

  # Read-only: the margins are frozen dataclasses.
  @property
  def scale(self) -> float: ...

  @property
  def uses_norms(self) -> bool: ...

  @property
  def needs_rng(self) -> bool: ...

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array: ...

  def target_logit(self, theta: jax.Array) -> jax.Array: ...

  def init_state(self) -> dict[str, jax.Array]: ...

  def prepare(
    self,
    target_cos: jax.Array,
    valid: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]: ...

  def bind(self, rows: dict[str, jax.Array]) -> Any: ...

  def apply(
    self,
    cos: jax.Array,
    labels: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def as_compute_dtype(x: jax.Array) -> jax.Array:
  """x in float32, or float64 when it already is (tests check gradients in float64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@jax.custom_jvp
def safe_arccos(cos: jax.Array) -> jax.Array:
  """arccos(clip(cos, −1, 1)), exact in value, with the slope −1/sinθ capped at ±1 (see above)."""
  return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


@safe_arccos.defjvp
def _safe_arccos_jvp(primals, tangents):
  (cos,), (dcos,) = primals, tangents
  cos = jnp.clip(cos, -1.0, 1.0)
  slope = -jax.lax.rsqrt(jnp.maximum(1.0 - cos * cos, _SIN2_FLOOR))
  return jnp.arccos(cos), slope * dcos


def safe_sin_from_cos(cos: jax.Array) -> jax.Array:
  """sin θ = sqrt(1 − cos²θ) for θ in [0, π], exact in value, slope capped at cos = ±1."""
  sin2 = 1.0 - cos * cos
  big = sin2 > _SIN2_FLOOR
  # Double where: the differentiated sqrt never sees sin²θ ≤ floor, where its slope explodes; there
  # the value (at most 1e-5) is kept without a gradient.
  tiny = jax.lax.stop_gradient(jnp.sqrt(jnp.maximum(sin2, 0.0)))
  return jnp.where(big, jnp.sqrt(jnp.where(big, sin2, 1.0)), tiny)


def gather_target(cos: jax.Array, labels: jax.Array) -> jax.Array:
  """cos[i, labels[i]] as (B,), 0 for rows with label −1.

  A masked row sum rather than a gather: XLA fuses it with the other passes over the (B, C) array
  and its gradient is an elementwise select instead of a scatter into a fresh B×C buffer.
  """
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  return jnp.sum(jnp.where(is_target, cos, 0.0), axis=-1)


def replace_target(values: jax.Array, labels: jax.Array, target: jax.Array) -> jax.Array:
  """`values` (B, C) with column labels[i] of row i set to target[i]; rows with label −1 kept."""
  is_target = jnp.arange(values.shape[-1])[None, :] == labels[:, None]
  return jnp.where(is_target, target[:, None], values)


def straight_through_target(cos: jax.Array, target: jax.Array) -> jax.Array:
  """The value of `target`, the gradient of `cos` (the margin moves the logit, not the slope)."""
  return cos + jax.lax.stop_gradient(target - cos)


class Stateless:
  """The state protocol of a margin that needs no state, feature norms or randomness.

  `prepare` returns no per-row parameters, `bind` the margin itself (so the model-parallel head
  applies it unchanged), and `apply` is `mg(cos, labels)` with the state passed through.
  """

  uses_norms = False
  needs_rng = False

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array:
    raise NotImplementedError(f'{type(self).__name__} must define its logits, __call__')

  def init_state(self) -> dict[str, jax.Array]:
    return {}

  def prepare(
    self,
    target_cos: jax.Array,
    valid: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    return {}, dict(state)

  def bind(self, rows: dict[str, jax.Array]) -> Any:
    return self

  def apply(
    self,
    cos: jax.Array,
    labels: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    return self(cos, labels), dict(state)


@dataclasses.dataclass(frozen=True)
class CombinedMargin(Stateless):
  """Target logit s·(cos(m1·θ + m2) − m3): NormSoftmax, CosFace, ArcFace and CM1/CM2/SphereFace-1.35.

  Past θ0 = (π − m2)/m1, cos(m1·θ + m2) would rise again and reward a larger angle. By default the
  curve then continues monotonically: for m1 = 1 with the paper-era ArcFace rule cos θ − m2·sin m2
  (REFERENCE §1); for m1 ≠ 1 with cos θ − (cos θ0 + 1), the shift that makes it continuous at θ0.
  `easy_margin` instead applies the angular part only where cos θ > 0 (elsewhere cos θ − m3).
  `straight_through` keeps the value and gives the target logit the gradient of s·cos θ.
  """

  scale: float = 64.0
  m1: float = 1.0
  m2: float = 0.0
  m3: float = 0.0
  easy_margin: bool = False
  straight_through: bool = False

  @property
  def fallback_theta(self) -> float:
    """θ0 where m1·θ + m2 reaches π (π or more: no fallback needed)."""
    return (math.pi - self.m2) / self.m1 if self.m1 > 0 else math.inf

  def _fallback_drop(self) -> float:
    if self.m1 == 1.0:
      return self.m2 * math.sin(self.m2)
    return math.cos(self.fallback_theta) + 1.0

  def target_cos(self, cos: jax.Array) -> jax.Array:
    """The unscaled target logit as a function of cos θ (float32, any shape)."""
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    if self.m1 == 1.0 and self.m2 == 0.0:
      return cos - self.m3
    if self.m1 == 1.0:
      # cos(θ + m) = cos θ cos m − sin θ sin m, no arccos: finite gradient at cos = ±1.
      sin = safe_sin_from_cos(cos)
      value = cos * math.cos(self.m2) - sin * math.sin(self.m2)
    else:
      value = jnp.cos(self.m1 * safe_arccos(cos) + self.m2)
    if self.easy_margin:
      return jnp.where(cos > 0.0, value, cos) - self.m3
    if self.fallback_theta < math.pi:
      value = jnp.where(cos > math.cos(self.fallback_theta), value, cos - self._fallback_drop())
    return value - self.m3

  def target_logit(self, theta: jax.Array) -> jax.Array:
    """Unscaled target logit at angle `theta` (radians, in [0, π])."""
    return self.target_cos(jnp.cos(as_compute_dtype(theta)))

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    target_cos = gather_target(cos, labels)
    target = self.target_cos(target_cos)
    if self.straight_through:
      target = straight_through_target(target_cos, target)
    return self.scale * replace_target(cos, labels, target)


def chebyshev(cos: jax.Array, m: int) -> jax.Array:
  """cos(m·θ) as the Chebyshev polynomial T_m(cos θ): exact, smooth, no arccos."""
  prev, cur = jnp.ones_like(cos), cos
  if m == 0:
    return prev
  for _ in range(m - 1):
    prev, cur = cur, 2.0 * cos * cur - prev
  return cur


@dataclasses.dataclass(frozen=True)
class SphereFaceMargin(Stateless):
  """A-softmax (SphereFace, Liu et al. 2017): ψ(θ) = (−1)^k cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m].

  The original multiplies every logit by the feature norm ||x|| instead of a fixed scale, and blends
  in the plain logit with a weight λ annealed over training, λ = max(λ_min, base·(1 + γ·step)^−p):
  target = (λ·cos θ + ψ(θ)) / (1 + λ). `mg(cos, labels, norms=..., lam=...)` takes the norms (B,)
  and λ; without norms the logits are scaled by `scale` (1 by default), without λ the blend is off.
  """

  m: int = 4
  scale: float = 1.0
  lambda_base: float = 1000.0
  lambda_gamma: float = 0.12
  lambda_power: float = 1.0
  lambda_min: float = 5.0
  uses_feature_norm = True  # callers pass ||x|| (B,) as `norms`
  uses_norms = True

  def __post_init__(self):
    if self.m != int(self.m) or self.m < 1:
      raise ValueError(
        f'SphereFace (A-softmax) needs an integer margin m >= 1, got {self.m}; '
        'the paper\'s real-valued SphereFace 1.35 is combined with m1=1.35'
      )

  def lambda_at(self, step: jax.Array) -> jax.Array:
    """The softmax-blend weight λ at training step `step` (float32 scalar)."""
    step = jnp.asarray(step, jnp.float32)
    lam = self.lambda_base * (1.0 + self.lambda_gamma * step) ** (-self.lambda_power)
    return jnp.maximum(lam, self.lambda_min)

  def psi(self, cos: jax.Array) -> jax.Array:
    """ψ as a function of cos θ: k counts the boundaries cos(jπ/m) that cos θ lies at or below."""
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    m = int(self.m)
    k = sum((cos <= math.cos(j * math.pi / m)).astype(cos.dtype) for j in range(1, m))
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)
    return sign * chebyshev(cos, m) - 2.0 * k

  def target_cos(self, cos: jax.Array, lam: jax.Array | float = 0.0) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    return (lam * cos + self.psi(cos)) / (1.0 + lam)

  def target_logit(self, theta: jax.Array, lam: jax.Array | float = 0.0) -> jax.Array:
    """Unscaled target logit (per unit feature norm) at angle `theta`, blend weight `lam`."""
    return self.target_cos(jnp.cos(as_compute_dtype(theta)), lam)

  def __call__(
    self,
    cos: jax.Array,
    labels: jax.Array,
    *,
    norms: jax.Array | None = None,
    lam: jax.Array | float = 0.0,
  ) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    target = self.target_cos(gather_target(cos, labels), lam)
    logits = replace_target(cos, labels, target)
    if norms is None:
      return self.scale * logits
    return as_compute_dtype(norms)[:, None] * logits

  def apply(
    self,
    cos: jax.Array,
    labels: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`mg(cos, labels, norms=norms)` without the softmax blend (λ needs the step: the objective
    calls `mg(..., lam=mg.lambda_at(step))` itself)."""
    return self(cos, labels, norms=norms), dict(state)
