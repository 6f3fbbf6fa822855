"""Margins: the target logit of every loss, by name (`get`, `from_config`, `names`).

  norm_softmax, cosface, arcface, combined, sphereface   the ArcFace paper's comparison (classic.py)
  subcenter        Sub-center ArcFace (Deng et al., ECCV 2020): ArcFace over the max of K
                   sub-centres per class (config.head.subcenters, default 3; `subcenter_cos`)
  curricularface, magface, adaface, elasticface_arc, elasticface_cos               (adaptive.py)

Every margin `mg` offers
  mg.init_state() -> dict            {} when stateless ({'t'} curricularface, {'norm_mean',
                                     'norm_std'} adaface): it lives in the train state
  mg.apply(cos, labels, *, state, norms=None, rng=None) -> (logits, new_state)
                                     cos (B, C), labels (B,) (−1: target elsewhere), norms (B,) the
                                     un-normalised feature norms, rng the step's key
  mg.prepare(target_cos, valid, *, state, norms, rng) -> (rows, new_state) and mg.bind(rows), the
                                     two halves of apply that the model-parallel head runs over the
                                     GLOBAL batch and then per device (see adaptive.py)
  mg.target_logit(theta)             the unscaled target curve, for the analysis figures
and the wave-1 margins stay callable as `mg(cos, labels)`. `mg.uses_norms` / `mg.needs_rng` say
which inputs apply needs; magface adds `mg.regularizer(norms)`, the λ_g·mean g(a) loss term.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax import margin_ranges
from arcface_jax.margin_ranges import MarginRangeError
from arcface_jax.margins.adaptive import (
  AdaFaceMargin,
  BoundMargin,
  CurricularFaceMargin,
  ElasticFaceMargin,
  MagFaceMargin,
  RowMargin,
  subcenter_cos,
)
from arcface_jax.margins.classic import (
  CombinedMargin,
  Margin,
  SphereFaceMargin,
  Stateless,
  as_compute_dtype,
  chebyshev,
  gather_target,
  replace_target,
  safe_arccos,
  safe_sin_from_cos,
  straight_through_target,
)

# Paper defaults per name; `m` is the name's single margin (None: the name has no single margin).
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
  'norm_softmax': dict(m1=1.0, m2=0.0, m3=0.0),
  'cosface': dict(m1=1.0, m2=0.0, m3=0.35),
  'arcface': dict(m1=1.0, m2=0.5, m3=0.0),
  'combined': dict(m1=1.0, m2=0.3, m3=0.2),  # CM1
  'sphereface': dict(m=4),
  'subcenter': dict(m1=1.0, m2=0.5, m3=0.0),  # ArcFace over the sub-centres' max
  'curricularface': dict(m=0.5, momentum=0.99),
  'magface': dict(l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0, easy_margin=True),
  'adaface': dict(m=0.4, h=0.333, momentum=0.99),
  'elasticface_arc': dict(m=0.5, sigma=0.05, plus=False),
  'elasticface_cos': dict(m=0.35, sigma=0.05, plus=False),
}
# ElasticFace+ draws from a narrower normal (the paper's σ for the sorted variants).
ELASTIC_PLUS_SIGMA = {'elasticface_arc': 0.0175, 'elasticface_cos': 0.02}
_SINGLE_MARGIN = {'cosface': 'm3', 'arcface': 'm2', 'subcenter': 'm2'}
_NEW_PARAMS = {
  'curricularface': ('m', 'momentum'),
  'magface': ('l_a', 'u_a', 'l_m', 'u_m', 'lambda_g', 'easy_margin'),
  'adaface': ('m', 'h', 'momentum'),
  'elasticface_arc': ('m', 'sigma', 'plus'),
  'elasticface_cos': ('m', 'sigma', 'plus'),
}
DEFAULT_SCALE = 64.0
DEFAULT_SUBCENTERS = 3  # Sub-center ArcFace's K


def names() -> list[str]:
  """Valid margin names for `get`."""
  return sorted(PAPER_DEFAULTS)


def subcenters_for(name: str, configured: int | None) -> int:
  """Sub-centres per class: `configured` (config.head.subcenters), or 3 for subcenter, else 1."""
  k = (DEFAULT_SUBCENTERS if name == 'subcenter' else 1) if configured is None else int(configured)
  if k < 1:
    raise ValueError(f'config.head.subcenters={configured} must be >= 1 (1 = one centre a class)')
  return k


def _get_new(name: str, s: float | None, params: dict[str, Any]) -> Margin:
  allowed = _NEW_PARAMS[name]
  unknown = sorted(k for k, v in params.items() if v is not None and k not in allowed)
  if unknown:
    raise ValueError(
      f'{unknown} do not apply to {name!r}; its parameters are s, {", ".join(allowed)}'
    )
  values = dict(PAPER_DEFAULTS[name])
  if name.startswith('elasticface') and params.get('plus') and params.get('sigma') is None:
    values['sigma'] = ELASTIC_PLUS_SIGMA[name]
  values.update({k: v for k, v in params.items() if v is not None})
  scale = DEFAULT_SCALE if s is None else float(s)
  if name == 'curricularface':
    return CurricularFaceMargin(scale=scale, **values)
  if name == 'magface':
    return MagFaceMargin(scale=scale, **values)
  if name == 'adaface':
    return AdaFaceMargin(scale=scale, **values)
  return ElasticFaceMargin(kind=name.rsplit('_', 1)[1], scale=scale, **values)


def get(
  name: str,
  *,
  s: float | None = None,
  m: float | None = None,
  m1: float | None = None,
  m2: float | None = None,
  m3: float | None = None,
  easy_margin: bool | None = None,
  straight_through: bool = False,
  momentum: float | None = None,
  h: float | None = None,
  l_a: float | None = None,
  u_a: float | None = None,
  l_m: float | None = None,
  u_m: float | None = None,
  lambda_g: float | None = None,
  sigma: float | None = None,
  plus: bool | None = None,
  **sphereface_params: float,
) -> Margin:
  """The margin called `name` with the paper's defaults, overridden by any non-None argument.

  s: scale (64; for sphereface the scale used when no feature norms are passed, default 1).
  m: the single margin of cosface (m3), arcface/subcenter (m2), sphereface (integer m),
     curricularface, adaface and elasticface_* (their m).
  m1, m2, m3: the combined form's margins (also accepted for norm_softmax/cosface/arcface).
  easy_margin: arcface/combined (default False) and magface (default True, its official code).
  momentum (curricularface, adaface), h (adaface), l_a, u_a, l_m, u_m, lambda_g (magface),
  sigma, plus (elasticface_*; plus without sigma takes the paper's σ = 0.0175 arc, 0.02 cos).
  sphereface_params: lambda_base, lambda_gamma, lambda_power, lambda_min (sphereface only).
  """
  if name == 'softmax':
    raise ValueError(
      "'softmax' is not a margin: plain softmax (unnormalised FC with bias) is a "
      "head option, built by losses.build_objective for loss.name='softmax'"
    )
  if name not in PAPER_DEFAULTS:
    raise ValueError(
      f'unknown margin {name!r}; valid names: {names()} (and softmax, a head '
      'option of losses.build_objective)'
    )
  new = dict(
    momentum=momentum,
    h=h,
    l_a=l_a,
    u_a=u_a,
    l_m=l_m,
    u_m=u_m,
    lambda_g=lambda_g,
    sigma=sigma,
    plus=plus,
  )
  if name in _NEW_PARAMS:
    if any(v is not None for v in (m1, m2, m3)) or straight_through or sphereface_params:
      raise ValueError(
        f'{name!r} takes s and {", ".join(_NEW_PARAMS[name])}; m1/m2/m3, '
        'straight_through and lambda_* belong to other margins'
      )
    return _get_new(name, s, dict(new, m=m, easy_margin=easy_margin))
  if any(v is not None for v in new.values()):
    used = sorted(k for k, v in new.items() if v is not None)
    raise ValueError(
      f'{used} do not apply to {name!r} (only to curricularface, magface, '
      'adaface and elasticface_*)'
    )
  if name == 'sphereface':
    if any(v is not None for v in (m1, m2, m3)) or easy_margin or straight_through:
      raise ValueError(
        'sphereface (A-softmax) takes m (integer), s and lambda_*; for the '
        'real-valued SphereFace 1.35 use combined with m1=1.35'
      )
    params: dict[str, Any] = dict(sphereface_params)
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
  return CombinedMargin(
    scale=scale, easy_margin=bool(easy_margin), straight_through=straight_through, **params
  )


def _opt(loss_config: Any, key: str) -> Any:
  """config.loss[key], None where an older config lacks the key."""
  try:
    return loss_config[key]
  except (KeyError, AttributeError):
    return None


def from_config(loss_config: Any) -> Margin:
  """The margin of a `config.loss` section; None placeholders become the paper's defaults."""
  name = loss_config.name
  if name == 'sphereface':
    extra = dict(
      lambda_base=loss_config.sphereface_lambda_base,
      lambda_gamma=loss_config.sphereface_lambda_gamma,
      lambda_power=loss_config.sphereface_lambda_power,
      lambda_min=loss_config.sphereface_lambda_min,
    )
    m = loss_config.m
    return get('sphereface', s=loss_config.s, m=None if m is None else _as_int(m), **extra)
  if name in _NEW_PARAMS:
    params = {k: _opt(loss_config, k) for k in _NEW_PARAMS[name]}
    return get(name, s=loss_config.s, **params)
  return get(
    name,
    s=loss_config.s,
    m=loss_config.m,
    m1=loss_config.m1,
    m2=loss_config.m2,
    m3=loss_config.m3,
    easy_margin=_opt(loss_config, 'easy_margin'),
    straight_through=loss_config.straight_through,
  )


def _as_int(m: float) -> int | float:
  # loss.m is a float field; 4.0 means the integer A-softmax margin 4, 1.35 is rejected by
  # SphereFaceMargin with a message pointing at combined m1=1.35.
  return int(m) if float(m).is_integer() else m


def add_loss_terms(
  margin: Any, margin_state: dict, norms: jax.Array, loss: jax.Array, metrics: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MagFace's λ_g · mean g(a) added to the loss; the feature norm and margin state as metrics."""
  metrics = dict(metrics)
  metrics['feature_norm'] = jnp.mean(jax.lax.stop_gradient(norms))
  if hasattr(margin, 'regularizer'):
    term = margin.regularizer(norms)
    metrics['magface_regularizer'] = term
    loss = loss + term
  for key, value in margin_state.items():
    metrics[f'margin_{key}'] = value
  return loss, metrics


__all__ = [
  'add_loss_terms',
  'AdaFaceMargin',
  'BoundMargin',
  'CombinedMargin',
  'CurricularFaceMargin',
  'ElasticFaceMargin',
  'MagFaceMargin',
  'Margin',
  'MarginRangeError',
  'RowMargin',
  'SphereFaceMargin',
  'Stateless',
  'PAPER_DEFAULTS',
  'DEFAULT_SCALE',
  'DEFAULT_SUBCENTERS',
  'as_compute_dtype',
  'chebyshev',
  'from_config',
  'gather_target',
  'get',
  'names',
  'replace_target',
  'safe_arccos',
  'safe_sin_from_cos',
  'straight_through_target',
  'subcenter_cos',
  'subcenters_for',
]
