"""Margins: the target logit of every loss in the ArcFace comparison, as functions of cos θ.

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
`get('softmax')` raises a ValueError saying so.

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

from arcface_jax import margin_ranges
from arcface_jax.margin_ranges import MarginRangeError  # noqa: F401  (margins.MarginRangeError)

# Floor on sin²θ in derivatives only: d sinθ / d cosθ = −cosθ / sinθ and d arccos = −1 / sinθ are
# infinite at cos θ = ±1; flooring sin²θ at 1e-10 caps them at 1e5 while values stay exact.
_SIN2_FLOOR = 1e-10


class Margin(Protocol):
  """What every margin offers (see the module docstring)."""
  scale: float

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array:
    ...

  def target_logit(self, theta: jax.Array) -> jax.Array:
    ...


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


@dataclasses.dataclass(frozen=True)
class CombinedMargin:
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
class SphereFaceMargin:
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

  def __post_init__(self):
    if self.m != int(self.m) or self.m < 1:
      raise ValueError(f'SphereFace (A-softmax) needs an integer margin m >= 1, got {self.m}; '
                       'the paper\'s real-valued SphereFace 1.35 is combined with m1=1.35')

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

  def __call__(self, cos: jax.Array, labels: jax.Array, *, norms: jax.Array | None = None,
               lam: jax.Array | float = 0.0) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    target = self.target_cos(gather_target(cos, labels), lam)
    logits = replace_target(cos, labels, target)
    if norms is None:
      return self.scale * logits
    return as_compute_dtype(norms)[:, None] * logits


# Paper defaults per name; `m` is the name's single margin (None: the name has no single margin).
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    'norm_softmax': dict(m1=1.0, m2=0.0, m3=0.0),
    'cosface': dict(m1=1.0, m2=0.0, m3=0.35),
    'arcface': dict(m1=1.0, m2=0.5, m3=0.0),
    'combined': dict(m1=1.0, m2=0.3, m3=0.2),  # CM1
    'sphereface': dict(m=4),
}
_SINGLE_MARGIN = {'cosface': 'm3', 'arcface': 'm2'}
DEFAULT_SCALE = 64.0


def names() -> list[str]:
  """Valid margin names for `get`."""
  return sorted(PAPER_DEFAULTS)


def get(name: str, *, s: float | None = None, m: float | None = None, m1: float | None = None,
        m2: float | None = None, m3: float | None = None, easy_margin: bool = False,
        straight_through: bool = False, **sphereface_params: float) -> Margin:
  """The margin called `name` with the paper's defaults, overridden by any non-None argument.

  s: scale (64; for sphereface the scale used when no feature norms are passed, default 1).
  m: the single margin of cosface (m3), arcface (m2) and sphereface (integer m).
  m1, m2, m3: the combined form's margins (also accepted for norm_softmax/cosface/arcface).
  sphereface_params: lambda_base, lambda_gamma, lambda_power, lambda_min (sphereface only).
  A value outside its valid range raises `MarginRangeError` naming the argument (margin_ranges).
  """
  if name == 'softmax':
    raise ValueError("'softmax' is not a margin: plain softmax (unnormalised FC with bias) is a "
                     "head option, built by losses.build_objective for loss.name='softmax'")
  if name not in PAPER_DEFAULTS:
    raise ValueError(f'unknown margin {name!r}; valid names: {names()} (and softmax, a head '
                     'option of losses.build_objective)')
  if name == 'sphereface':
    if any(v is not None for v in (m1, m2, m3)) or easy_margin or straight_through:
      raise ValueError('sphereface (A-softmax) takes m (integer), s and lambda_*; for the '
                       'real-valued SphereFace 1.35 use combined with m1=1.35')
    params = dict(sphereface_params)
    if m is not None:
      params['m'] = m
    if s is not None:
      params['scale'] = s
    margin_ranges.check_sphereface(params)
    return SphereFaceMargin(**params)
  if sphereface_params:
    raise ValueError(f'{sorted(sphereface_params)} only apply to sphereface, not {name!r}')
  params = dict(PAPER_DEFAULTS[name])
  explicit = {'m1': m1, 'm2': m2, 'm3': m3}
  given_as = {}  # errors name the argument the caller used: arcface's m, not m2
  if m is not None:
    key = _SINGLE_MARGIN.get(name)
    if key is None:
      raise ValueError(f'margin {name!r} has no single margin m; set m1/m2/m3')
    params[key] = m
    if explicit[key] is None:
      given_as[key] = 'm'
  for key, value in explicit.items():
    if value is not None:
      params[key] = value
  scale = DEFAULT_SCALE if s is None else s
  margin_ranges.check_scale(name, scale)
  margin_ranges.check_combined(name, params['m1'], params['m2'], params['m3'], given_as)
  return CombinedMargin(scale=scale, easy_margin=easy_margin,
                        straight_through=straight_through, **params)


def from_config(loss_config: Any) -> Margin:
  """The margin of a `config.loss` section; None placeholders become the paper's defaults."""
  extra = {}
  if loss_config.name == 'sphereface':
    extra = dict(lambda_base=loss_config.sphereface_lambda_base,
                 lambda_gamma=loss_config.sphereface_lambda_gamma,
                 lambda_power=loss_config.sphereface_lambda_power,
                 lambda_min=loss_config.sphereface_lambda_min)
    m = loss_config.m
    return get('sphereface', s=loss_config.s, m=None if m is None else _as_int(m), **extra)
  return get(loss_config.name, s=loss_config.s, m=loss_config.m, m1=loss_config.m1,
             m2=loss_config.m2, m3=loss_config.m3, easy_margin=loss_config.easy_margin,
             straight_through=loss_config.straight_through)


def _as_int(m: float) -> int | float:
  # loss.m is a float field; 4.0 means the integer A-softmax margin 4, 1.35 is rejected by
  # SphereFaceMargin with a message pointing at combined m1=1.35.
  return int(m) if float(m).is_integer() else m
