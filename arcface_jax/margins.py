"""Margins: the target logit of every loss the ArcFace paper compares, as functions of cos θ.

All margins are instances of the combined form cos(m1·θ + m2) − m3, scaled by s:
norm_softmax (1, 0, 0), cosface (1, 0, m), arcface (1, m, 0), combined (m1, m2, m3); SphereFace's
integer A-softmax ψ(θ) lives in `losses` because it needs the feature norm.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class CombinedMargin:
  """Target logit s·(cos(m1·θ + m2) − m3), monotone past θ + m2 > π, NaN-free at cos = ±1."""
  scale: float = 64.0
  m1: float = 1.0
  m2: float = 0.0
  m3: float = 0.0
  easy_margin: bool = False
  straight_through: bool = False

  def target_cos(self, cos: jax.Array) -> jax.Array:
    """The unscaled target logit as a function of cos θ (float32)."""
    cos = jnp.clip(cos.astype(jnp.float32), -1.0, 1.0)
    if self.m1 == 1.0 and self.m2 == 0.0:
      return cos - self.m3
    if self.m1 == 1.0:
      # cos(θ + m) = cos θ cos m − sin θ sin m; sin θ floored away from 0 so that d/dcos stays
      # finite at cos = ±1 (where arccos has an infinite derivative).
      sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, _EPS))
      value = cos * math.cos(self.m2) - sin * math.sin(self.m2)
    else:
      theta = jnp.arccos(jnp.clip(cos, -1.0 + _EPS, 1.0 - _EPS))
      value = jnp.cos(self.m1 * theta + self.m2)
    value = value - self.m3
    if self.easy_margin:
      return jnp.where(cos > 0, value, cos)
    # Past θ = (π − m2)/m1 the curve would rise again; continue it monotonically instead.
    threshold = math.cos(max(min((math.pi - self.m2) / self.m1, math.pi), 0.0))
    fallback = cos - self.m3 - self._fallback_drop()
    return jnp.where(cos > threshold, value, fallback)

  def _fallback_drop(self) -> float:
    # The paper-era fix for ArcFace: cos θ − m·sin m. It is monotone; note that it meets
    # cos(θ + m) only approximately at θ = π − m (−cos m − m sin m against −1).
    if self.m1 == 1.0:
      return self.m2 * math.sin(self.m2)
    theta0 = min((math.pi - self.m2) / self.m1, math.pi)
    return math.cos(theta0) - math.cos(self.m1 * theta0 + self.m2)

  def target_logit(self, theta: jax.Array) -> jax.Array:
    return self.target_cos(jnp.cos(jnp.asarray(theta, jnp.float32)))

  def __call__(self, cos: jax.Array, labels: jax.Array) -> jax.Array:
    cos = jnp.clip(cos.astype(jnp.float32), -1.0, 1.0)
    classes = jnp.arange(cos.shape[-1])
    is_target = (labels[:, None] == classes[None, :]) & (labels[:, None] >= 0)
    target = self.target_cos(cos)
    if self.straight_through:
      target = cos + jax.lax.stop_gradient(target - cos)
    return self.scale * jnp.where(is_target, target, cos)


PAPER_DEFAULTS = {
    'norm_softmax': dict(m1=1.0, m2=0.0, m3=0.0),
    'cosface': dict(m1=1.0, m2=0.0, m3=0.35),
    'arcface': dict(m1=1.0, m2=0.5, m3=0.0),
    'combined': dict(m1=1.0, m2=0.3, m3=0.2),
    'sphereface': dict(m1=1.35, m2=0.0, m3=0.0),
}


def names() -> list[str]:
  return sorted(PAPER_DEFAULTS)


def get(name: str, *, s: float = 64.0, m: float | None = None, m1: float | None = None,
        m2: float | None = None, m3: float | None = None, easy_margin: bool = False,
        straight_through: bool = False) -> CombinedMargin:
  if name not in PAPER_DEFAULTS:
    raise ValueError(f'unknown margin {name!r}; valid names: {names()} (plain softmax is a head '
                     'option: loss.name=softmax)')
  params = dict(PAPER_DEFAULTS[name])
  if m is not None:
    key = {'cosface': 'm3', 'arcface': 'm2', 'sphereface': 'm1'}.get(name)
    if key is None:
      raise ValueError(f'margin {name!r} takes m1/m2/m3, not m')
    params[key] = m
  for key, value in (('m1', m1), ('m2', m2), ('m3', m3)):
    if value is not None:
      params[key] = value
  return CombinedMargin(scale=s, easy_margin=easy_margin, straight_through=straight_through,
                        **params)


def from_config(loss_config) -> CombinedMargin:
  return get(loss_config.name, s=64.0 if loss_config.s is None else loss_config.s,
             m=loss_config.m, m1=loss_config.m1, m2=loss_config.m2, m3=loss_config.m3,
             easy_margin=loss_config.easy_margin, straight_through=loss_config.straight_through)
