"""Objectives of the ArcFace comparison, built on the margins of `arcface_jax.margins`.

`from_config(config, num_classes=, mesh=)` returns the head the trainer calls, dense
(`build_objective(config.loss, ...)`, an `Objective`) or model-parallel with Partial FC
(`parallel.ModelParallelObjective`, config.head.model_parallel); both offer
`init(rng) -> (head_params, head_state)` and `__call__(head_params, head_state, embeddings,
labels, step, rng=None) -> (loss, head_state, metrics)`
with embeddings un-normalised (the backbone's output: MagFace and AdaFace read their norms),
rng the step's key (ElasticFace's draws) and the margin's state (CurricularFace t, AdaFace norm
statistics) in head_state['margin'], updated over the whole global batch.

loss.name picks the main term:
  softmax                               unnormalised FC with bias, plain cross-entropy
  norm_softmax | cosface | arcface | combined
                                        s · margin(cos θ) over normalised features and centres
  sphereface                            A-softmax: ||x|| · ψ(θ) with the annealed λ blend
  subcenter | curricularface | magface | adaface | elasticface_arc | elasticface_cos
                                        the later margins (magface adds λ_g · mean g(‖x‖))
  triplet                               triplet loss alone (angular, semi-hard mining), no centres
and auxiliary terms are added by weight (0 = off): intra_weight (ArcFace paper's Intra-loss, mean
θ_y / π), inter_weight (Inter-loss, minus the mean angle between the target centre and the others
over π), triplet_weight, center_weight (Wen et al.'s centre loss on running centres, rate α).

Everything after the backbone runs in float32. Metrics always include 'loss', 'theta_target_deg',
'cos_target', 'cos_hardest_negative' (the margin at work: a loss stuck at 69.0776 = −ln 1e−30 with
θ_y near 90° is the classic collapse), plus one '<name>_loss' per active term. The terms
themselves (cross-entropies, angle metrics, Intra/Inter, triplet, centre loss) are in `loss_terms`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax import margin_head, margins, seeding
from arcface_jax.class_centres import initial_centres

# The terms live in loss_terms; they stay importable from here (`losses.triplet_loss`, ...).
from arcface_jax.loss_terms import (
  angle_metrics,
  center_loss,
  fused_margin_cross_entropy,
  inter_loss,
  intra_loss,
  l2_normalize,
  margin_softmax_cross_entropy,
  triplet_loss,
)

MARGIN_NAMES = (
  'norm_softmax',
  'cosface',
  'arcface',
  'combined',
  'sphereface',
  'subcenter',
  'curricularface',
  'magface',
  'adaface',
  'elasticface_arc',
  'elasticface_cos',
)
NAMES = ('softmax', 'triplet') + MARGIN_NAMES


@dataclasses.dataclass(frozen=True)
class Objective:
  """The head: class centres (unless triplet-only), the main loss and the auxiliary terms."""

  num_classes: int
  embedding_dim: int
  name: str = 'arcface'
  margin: Any = None  # margins.Margin for margin names, None for softmax and triplet
  intra_weight: float = 0.0
  inter_weight: float = 0.0
  triplet_weight: float = 0.0
  triplet_margin: float = 0.35
  center_weight: float = 0.0
  center_alpha: float = 0.5
  init_std: float = 0.01  # centres ~ N(0, init_std²), the reference trainer's 0.01
  subcenters: int = 1  # K > 1: centres (C, K, D), each class's cos θ the max over its K
  init_centres: str | None = None  # a (C, D) .npy the centres start from (config.head)

  def init(self, rng: jax.Array) -> tuple[dict, dict]:
    """(head_params, head_state): centres ~ N(0, init_std²) (C, D) or (C, K, D), a zero bias for
    softmax, the centre-loss centres (zeros, as Wen et al.) when center_weight > 0, and the
    margin's state under 'margin' when it has one."""
    params: dict[str, jax.Array] = {}
    if self.name != 'triplet':
      shape = (
        (self.num_classes,)
        + ((self.subcenters,) if self.subcenters > 1 else ())
        + (self.embedding_dim,)
      )
      params['weight'] = self.init_std * jax.random.normal(rng, shape, jnp.float32)
      if self.init_centres:
        params['weight'] = jnp.asarray(initial_centres(self.init_centres, shape))
    if self.name == 'softmax':
      params['bias'] = jnp.zeros((self.num_classes,), jnp.float32)
    state: dict[str, Any] = {}  # arrays, and the margin's own state dict
    if self.center_weight > 0:
      state['centres'] = jnp.zeros((self.num_classes, self.embedding_dim), jnp.float32)
    margin_state = self.margin.init_state() if self.margin is not None else {}
    if margin_state:
      state['margin'] = margin_state
    return params, state

  def __call__(
    self,
    head_params: dict,
    head_state: dict,
    embeddings: jax.Array,
    labels: jax.Array,
    step: jax.Array,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    embeddings = margins.as_compute_dtype(embeddings)
    labels = labels.astype(jnp.int32)
    metrics: dict[str, jax.Array] = {}
    if self.name == 'triplet':
      loss, metrics = triplet_loss(embeddings, labels, self.triplet_margin)
      metrics['triplet_loss'] = loss
    else:
      loss, margin_state, metrics = self._classification_loss(
        head_params, head_state.get('margin', {}), embeddings, labels, step, rng, metrics
      )
    new_state = dict(head_state)
    if self.name != 'triplet' and margin_state:
      new_state['margin'] = margin_state
    if self.triplet_weight > 0 and self.name != 'triplet':
      term, _ = triplet_loss(embeddings, labels, self.triplet_margin)
      metrics['triplet_loss'] = term
      loss = loss + self.triplet_weight * term
    if self.center_weight > 0:
      term, new_state['centres'] = center_loss(
        embeddings, labels, head_state['centres'], self.center_alpha
      )
      metrics['center_loss'] = term
      loss = loss + self.center_weight * term
    metrics['loss'] = loss
    return loss, new_state, metrics

  def _classification_loss(self, head_params, margin_state, embeddings, labels, step, rng, metrics):
    weight = margins.as_compute_dtype(head_params['weight'])
    if margin_head.supports(self.margin, weight) and not (self.intra_weight or self.inter_weight):
      # The common case as one kernel (three matmuls, one (B, C) array kept; margin_head.py).
      loss, head_metrics = margin_head.margin_head(embeddings, weight, labels, self.margin)
      metrics['softmax_loss'] = loss
      metrics.update(head_metrics)
      return loss, margin_state, metrics
    weight_normed = l2_normalize(weight)
    sq_norm = jnp.sum(embeddings * embeddings, axis=-1, keepdims=True)
    inv_norm = jax.lax.rsqrt(jnp.maximum(sq_norm, 1e-12))
    if weight.ndim == 3:  # sub-centres: the class's cos θ is its nearest sub-centre's
      cos = margins.subcenter_cos(jnp.einsum('bd,ckd->bck', embeddings * inv_norm, weight_normed))
    else:
      cos = (embeddings * inv_norm) @ weight_normed.T
    if self.name == 'softmax':
      logits = embeddings @ weight.T + head_params['bias']
    elif self.name == 'sphereface':
      lam = self.margin.lambda_at(step)
      norms = jnp.sqrt(jnp.maximum(sq_norm[:, 0], 1e-12))
      logits = self.margin(cos, labels, norms=norms, lam=lam)
      metrics['sphereface_lambda'] = lam
    elif isinstance(self.margin, margins.CombinedMargin):
      logits = None
    else:
      norms = jnp.sqrt(jnp.maximum(sq_norm[:, 0], 1e-12))
      logits, margin_state = self.margin.apply(
        cos, labels, state=margin_state, norms=norms, rng=rng
      )
    if logits is None:
      loss = fused_margin_cross_entropy(cos, labels, self.margin)
    else:
      loss = margin_softmax_cross_entropy(logits, labels)
    metrics['softmax_loss'] = loss
    if self.margin is not None and not isinstance(self.margin, margins.Stateless):
      norms = jnp.sqrt(jnp.maximum(sq_norm[:, 0], 1e-12))
      loss, metrics = margins.add_loss_terms(self.margin, margin_state, norms, loss, metrics)
    metrics.update(angle_metrics(cos, labels))
    if self.intra_weight > 0:
      term = intra_loss(margins.gather_target(cos, labels))
      metrics['intra_loss'] = term
      loss = loss + self.intra_weight * term
    if self.inter_weight > 0:
      term = inter_loss(weight_normed, labels)
      metrics['inter_loss'] = term
      loss = loss + self.inter_weight * term
    return loss, margin_state, metrics


def build_objective(
  loss_config: Any,
  *,
  num_classes: int,
  embedding_dim: int,
  init_std: float = 0.01,
  subcenters: int | None = None,
  init_centres: str | None = None,
) -> Objective:
  """The objective of a `config.loss` section (None placeholders resolved to paper defaults);
  `init_std`, `subcenters` and `init_centres` are those of `config.head`."""
  name = loss_config.name
  if name not in NAMES:
    raise ValueError(f'unknown loss.name {name!r}; valid names: {sorted(NAMES)}')
  if name == 'triplet' and (loss_config.intra_weight > 0 or loss_config.inter_weight > 0):
    raise ValueError(
      'loss.name=triplet has no class centres: intra_weight and inter_weight '
      'need a classification loss (e.g. loss.name=arcface)'
    )
  margin = margins.from_config(loss_config) if name in MARGIN_NAMES else None
  k = margins.subcenters_for(name, subcenters)
  if k > 1 and (
    name in ('softmax', 'triplet', 'sphereface')
    or loss_config.inter_weight > 0
    or loss_config.center_weight > 0
  ):
    raise ValueError(
      f'config.head.subcenters={k} needs a normalised margin loss without '
      f'inter_weight/center_weight (loss.name={name!r}); set head.subcenters=1'
    )
  return Objective(
    num_classes=num_classes,
    embedding_dim=embedding_dim,
    name=name,
    margin=margin,
    intra_weight=float(loss_config.intra_weight),
    inter_weight=float(loss_config.inter_weight),
    triplet_weight=float(loss_config.triplet_weight),
    triplet_margin=float(loss_config.triplet_margin),
    center_weight=float(loss_config.center_weight),
    center_alpha=float(loss_config.center_alpha),
    init_std=float(init_std),
    subcenters=k,
    init_centres=init_centres or None,
  )


def from_config(config: Any, *, num_classes: int, mesh: Any = None) -> Any:
  """The head of a whole config: model-parallel (config.head.model_parallel, centres split over
  `mesh`, default every device) or dense. Raises ValueError naming the offending key."""
  if config.head.model_parallel:
    from arcface_jax import parallel  # the dense head needs no mesh machinery

    return parallel.ModelParallelObjective(
      config.loss,
      config.head,
      num_classes=num_classes,
      embedding_dim=config.model.embedding_dim,
      mesh=parallel.make_mesh() if mesh is None else mesh,
      seed=seeding.integer_seed(seeding.keys(config)['sampling']),
    )
  return build_objective(
    config.loss,
    num_classes=num_classes,
    embedding_dim=config.model.embedding_dim,
    init_std=config.head.init_std,
    subcenters=config.head.get('subcenters'),
    init_centres=config.head.get('init_centres'),
  )
