"""Margins after ArcFace whose target logit depends on more than cos θ: state, norms, randomness.

  curricularface  CurricularFace (Huang et al., CVPR 2020): ArcFace target; a hard negative
                  (cos θ_j > cos(θ_y + m)) becomes cos θ_j · (t + cos θ_j), t a running mean of the
                  batch's target cosines (momentum 0.99, t₀ = 0).
  magface         MagFace (Meng et al., CVPR 2021): ArcFace with m(a) linear in the feature norm
                  a ∈ [l_a, u_a] from l_m to u_m, plus λ_g · mean g(a), g(a) = 1/a + a/u_a².
  adaface         AdaFace (Kim et al., CVPR 2022): the norm standardised by running mean/std
                  (momentum 0.99), ẑ = clip(h · (a − μ)/(σ + ε), −1, 1); target
                  cos(clip(θ − m·ẑ, ε, π − ε)) − (m + m·ẑ).
  elasticface_arc ElasticFace (Boutros et al., CVPRW 2022): cos(θ + m_i), m_i ~ N(m, σ²) per sample.
  elasticface_cos cos θ − m_i, m_i ~ N(m, σ²). `plus` sorts the draws by difficulty.

The protocol (see arcface_jax.margins): `prepare(target_cos, valid, state=, norms=, rng=)` turns
the GLOBAL batch's target cosines (no gradient), feature norms (B,) and key into per-row
parameters and the new state; `bind(rows)` is a callable `(cos, labels) -> logits` that any
block of columns can apply (the model-parallel head calls it per device, Partial FC on its
sample); `apply` does both on one device. As in the official code the state is first updated
with the batch, then used. Everything runs in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax.margins.classic import (
  as_compute_dtype,
  gather_target,
  replace_target,
  safe_sin_from_cos,
)


def subcenter_cos(cos: jax.Array) -> jax.Array:
  """Sub-center ArcFace: (B, C, K) cosines to each class's K sub-centres → (B, C), their max."""
  return jnp.max(cos, axis=-1)


def _f32(value: float) -> jax.Array:
  return jnp.asarray(value, jnp.float32)


def _masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _arc(cos: jax.Array, m: jax.Array | float) -> jax.Array:
  """cos(θ + m) = cos θ cos m − sin θ sin m, finite in value and slope at cos θ = ±1."""
  return cos * jnp.cos(m) - safe_sin_from_cos(cos) * jnp.sin(m)


def _check(name: str, value: float, ok: bool, valid_range: str) -> None:
  if not ok:
    raise ValueError(f'{name}={value} is out of range: {valid_range}')


@dataclasses.dataclass(frozen=True)
class BoundMargin:
  """A margin with its per-row parameters fixed: `(cos, labels) -> logits` over any columns."""

  margin: Any
  rows: dict[str, jax.Array]

  @property
  def scale(self) -> float:
    return self.margin.scale

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array:
    return self.margin.logits(cos, labels, self.rows)


class RowMargin:
  """Shared `bind` and `apply` of the margins below (each defines prepare, logits)."""

  uses_norms = False
  needs_rng = False

  def prepare(
    self,
    target_cos: jax.Array,
    valid: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    raise NotImplementedError(f'{type(self).__name__} must define prepare')

  def logits(self, cos: jax.Array, labels: jax.Array, rows: dict[str, jax.Array]) -> jax.Array:
    raise NotImplementedError(f'{type(self).__name__} must define logits')

  def bind(self, rows: dict[str, jax.Array]) -> BoundMargin:
    return BoundMargin(self, rows)

  def apply(
    self,
    cos: jax.Array,
    labels: jax.Array,
    *,
    state: dict,
    norms: jax.Array | None = None,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scaled logits (B, C), new state) for one device holding every class."""
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    target_cos = jax.lax.stop_gradient(gather_target(cos, labels))
    rows, new_state = self.prepare(target_cos, labels >= 0, state=state, norms=norms, rng=rng)
    return self.logits(cos, labels, rows), new_state

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array:
    raise TypeError(
      f'{type(self).__name__} needs its state, feature norms or a key: call '
      'mg.apply(cos, labels, state=mg.init_state(), norms=..., rng=...)'
    )

  def _need_norms(self, norms):
    if norms is None:
      raise ValueError(
        f'{type(self).__name__} needs the un-normalised feature norms: pass norms= (B,)'
      )
    return as_compute_dtype(norms)


@dataclasses.dataclass(frozen=True)
class CurricularFaceMargin(RowMargin):
  """CurricularFace; the official code's fallback below θ = π − m is ArcFace's cos θ − m·sin m."""

  scale: float = 64.0
  m: float = 0.5
  momentum: float = 0.99

  def __post_init__(self):
    _check('s', self.scale, self.scale > 0, 's > 0')
    _check('m', self.m, 0.0 <= self.m < math.pi / 2, '0 <= m < pi/2')
    _check('momentum', self.momentum, 0.0 <= self.momentum < 1.0, '0 <= momentum < 1')

  def init_state(self) -> dict[str, jax.Array]:
    return {'t': _f32(0.0)}

  def prepare(self, target_cos, valid, *, state, norms=None, rng=None):
    target_cos = jnp.clip(as_compute_dtype(target_cos), -1.0, 1.0)
    t = self.momentum * state['t'] + (1.0 - self.momentum) * _masked_mean(target_cos, valid)
    # The official mask compares with the raw cos(θ_y + m), not the fallback-adjusted target.
    threshold = jnp.where(valid, _arc(target_cos, self.m), jnp.inf)
    return {'t': t, 'threshold': threshold}, {'t': t.astype(jnp.float32)}

  def target_cos(self, cos: jax.Array) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    return jnp.where(
      cos > math.cos(math.pi - self.m), _arc(cos, self.m), cos - math.sin(math.pi - self.m) * self.m
    )

  def target_logit(self, theta: jax.Array) -> jax.Array:
    """Unscaled target logit at angle `theta` (the same curve as ArcFace)."""
    return self.target_cos(jnp.cos(as_compute_dtype(theta)))

  def negative_logit(self, cos_j: jax.Array, target_theta: float, t: float) -> jax.Array:
    """Unscaled logit of a negative with cosine cos_j, for a target at `target_theta`, at t."""
    cos_j = as_compute_dtype(cos_j)
    hard = cos_j > math.cos(target_theta + self.m)
    return jnp.where(hard, cos_j * (t + cos_j), cos_j)

  def logits(self, cos, labels, rows):
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    hard = cos > rows['threshold'][:, None]
    others = jnp.where(hard, cos * (rows['t'] + cos), cos)
    target = self.target_cos(gather_target(cos, labels))
    return self.scale * replace_target(others, labels, target)


@dataclasses.dataclass(frozen=True)
class MagFaceMargin(RowMargin):
  """MagFace. The norm a is clipped to [l_a, u_a] for the margin and for g(a), as in the official
  code (so neither pushes a norm outside the bounds); the margin is differentiated through a."""

  scale: float = 64.0
  l_a: float = 10.0
  u_a: float = 110.0
  l_m: float = 0.45
  u_m: float = 0.8
  lambda_g: float = 35.0
  easy_margin: bool = True
  uses_norms = True

  def __post_init__(self):
    _check('s', self.scale, self.scale > 0, 's > 0')
    _check('l_a', self.l_a, 0.0 < self.l_a < self.u_a, f'0 < l_a < u_a={self.u_a}')
    _check('l_m', self.l_m, 0.0 <= self.l_m <= self.u_m, f'0 <= l_m <= u_m={self.u_m}')
    _check('u_m', self.u_m, self.u_m < math.pi / 2, 'u_m < pi/2')
    _check('lambda_g', self.lambda_g, self.lambda_g >= 0, 'lambda_g >= 0')

  def init_state(self) -> dict[str, jax.Array]:
    return {}

  def margin_at(self, norms: jax.Array) -> jax.Array:
    a = jnp.clip(as_compute_dtype(norms), self.l_a, self.u_a)
    return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

  def regularizer(self, norms: jax.Array) -> jax.Array:
    """λ_g · mean g(a), g(a) = 1/a + a/u_a² on the clipped norms: the term MagFace adds."""
    a = jnp.clip(as_compute_dtype(norms), self.l_a, self.u_a)
    return self.lambda_g * jnp.mean(1.0 / a + a / self.u_a**2)

  def prepare(self, target_cos, valid, *, state, norms=None, rng=None):
    return {'m': self.margin_at(self._need_norms(norms))}, dict(state)

  def target_cos(self, cos: jax.Array, m: jax.Array) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    value = _arc(cos, m)
    if self.easy_margin:
      return jnp.where(cos > 0.0, value, cos)
    return jnp.where(cos > jnp.cos(math.pi - m), value, cos - jnp.sin(math.pi - m) * m)

  def target_logit(self, theta: jax.Array, norm: float | None = None) -> jax.Array:
    """Unscaled target logit at `theta` for feature norm `norm` (default l_a: the smallest m)."""
    m = self.margin_at(jnp.asarray(self.l_a if norm is None else norm, jnp.float32))
    return self.target_cos(jnp.cos(as_compute_dtype(theta)), m)

  def logits(self, cos, labels, rows):
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    target = self.target_cos(gather_target(cos, labels), rows['m'])
    return self.scale * replace_target(cos, labels, target)


@dataclasses.dataclass(frozen=True)
class AdaFaceMargin(RowMargin):
  """AdaFace. As the official code: cosines clipped to [−1 + ε, 1 − ε] (ε = 1e-3) in every column,
  norms clipped to [0.001, 100] and detached, the unbiased batch std."""

  scale: float = 64.0
  m: float = 0.4
  h: float = 0.333
  momentum: float = 0.99
  eps = 1e-3
  uses_norms = True

  def __post_init__(self):
    _check('s', self.scale, self.scale > 0, 's > 0')
    _check('m', self.m, 0.0 <= self.m < math.pi / 2, '0 <= m < pi/2')
    _check('h', self.h, 0.0 < self.h <= 1.0, '0 < h <= 1')
    _check('momentum', self.momentum, 0.0 <= self.momentum < 1.0, '0 <= momentum < 1')

  def init_state(self) -> dict[str, jax.Array]:
    return {'norm_mean': _f32(20.0), 'norm_std': _f32(100.0)}

  def prepare(self, target_cos, valid, *, state, norms=None, rng=None):
    a = jax.lax.stop_gradient(jnp.clip(self._need_norms(norms), 0.001, 100.0))
    count = jnp.sum(valid)
    mean = _masked_mean(a, valid)
    # Unbiased (torch.std); one valid row has no spread, counted as 0 instead of torch's NaN.
    var = jnp.sum(jnp.where(valid, (a - mean) ** 2, 0.0)) / jnp.maximum(count - 1, 1)
    new_mean = self.momentum * state['norm_mean'] + (1.0 - self.momentum) * mean
    new_std = self.momentum * state['norm_std'] + (1.0 - self.momentum) * jnp.sqrt(var)
    scaler = jnp.clip(self.h * (a - new_mean) / (new_std + self.eps), -1.0, 1.0)
    new_state = {'norm_mean': new_mean.astype(jnp.float32), 'norm_std': new_std.astype(jnp.float32)}
    return {'scaler': scaler}, new_state

  def target_cos(self, cos: jax.Array, scaler: jax.Array) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0 + self.eps, 1.0 - self.eps)
    theta = jnp.arccos(cos)  # |cos| <= 1 − ε: a finite slope
    theta_m = jnp.clip(theta - self.m * scaler, self.eps, math.pi - self.eps)
    return jnp.cos(theta_m) - (self.m + self.m * scaler)

  def target_logit(self, theta: jax.Array, scaler: float = 0.0) -> jax.Array:
    """Unscaled target logit at `theta` for the standardised norm ẑ = `scaler` ∈ [−1, 1]."""
    return self.target_cos(jnp.cos(as_compute_dtype(theta)), jnp.asarray(scaler, jnp.float32))

  def logits(self, cos, labels, rows):
    # cos(arccos c) = c for the non-target columns: the official code's round trip is skipped.
    cos = jnp.clip(as_compute_dtype(cos), -1.0 + self.eps, 1.0 - self.eps)
    target = self.target_cos(gather_target(cos, labels), rows['scaler'])
    return self.scale * replace_target(cos, labels, target)


@dataclasses.dataclass(frozen=True)
class ElasticFaceMargin(RowMargin):
  """ElasticFace-Arc (kind 'arc') or -Cos ('cos'). Arc follows the official code: cos(θ + m_i)
  without a fallback past θ = π − m_i.

  `plus`: the drawn margins are sorted and the sample with the largest cos θ_y gets the smallest
  one, as the paper says. The official code indexes the sorted margins with the sort permutation
  of the cosines rather than its inverse (sample i gets margin[argsort(−cos)[i]]); we assign by
  rank instead, which is what the paper describes.
  """

  kind: str = 'arc'
  scale: float = 64.0
  m: float = 0.5
  sigma: float = 0.05
  plus: bool = False
  needs_rng = True

  def __post_init__(self):
    if self.kind not in ('arc', 'cos'):
      raise ValueError(f"ElasticFaceMargin kind={self.kind!r}: expected 'arc' or 'cos'")
    _check('s', self.scale, self.scale > 0, 's > 0')
    _check('m', self.m, 0.0 <= self.m < math.pi / 2, '0 <= m < pi/2')
    _check('sigma', self.sigma, 0.0 <= self.sigma <= 1.0, '0 <= sigma <= 1')

  def init_state(self) -> dict[str, jax.Array]:
    return {}

  def draw(self, rng: jax.Array, target_cos: jax.Array) -> jax.Array:
    """The per-sample margins (B,) for this key (sorted by difficulty with `plus`)."""
    if rng is None:
      raise ValueError('ElasticFace draws a margin per sample: pass rng= (the step\'s key)')
    margins = self.m + self.sigma * jax.random.normal(rng, target_cos.shape, jnp.float32)
    if not self.plus:
      return margins
    order = jnp.argsort(-target_cos)  # easiest (largest cos θ_y) first
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    return jnp.sort(margins)[rank]

  def prepare(self, target_cos, valid, *, state, norms=None, rng=None):
    return {'m': self.draw(rng, as_compute_dtype(target_cos))}, dict(state)

  def target_cos(self, cos: jax.Array, m: jax.Array) -> jax.Array:
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    return _arc(cos, m) if self.kind == 'arc' else cos - m

  def target_logit(self, theta: jax.Array, m: float | None = None) -> jax.Array:
    """Unscaled target logit at `theta` for the drawn margin `m` (default: the mean)."""
    return self.target_cos(
      jnp.cos(as_compute_dtype(theta)), jnp.asarray(self.m if m is None else m, jnp.float32)
    )

  def logits(self, cos, labels, rows):
    cos = jnp.clip(as_compute_dtype(cos), -1.0, 1.0)
    target = self.target_cos(gather_target(cos, labels), rows['m'].astype(cos.dtype))
    return self.scale * replace_target(cos, labels, target)
