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
θ_y near 90° is the classic collapse), plus one '<name>_loss' per active term.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax import margin_head, margins, seeding
from arcface_jax.class_centres import initial_centres

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


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ||x|| with the norm floored at 1e-6 (a zero row stays zero, gradient finite)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


def margin_softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of (B, C) logits against integer labels, in float32.

  Rows with label −1 (no target among these columns) contribute nothing and are not counted in
  the mean. Stable for any logit magnitude: logsumexp with the row maximum taken out.
  """
  logits = margins.as_compute_dtype(logits)
  valid = labels >= 0
  lse = jax.nn.logsumexp(logits, axis=-1)
  per_row = lse - margins.gather_target(logits, labels)
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _target_fn(margin):
  def target(c):
    t = margin.target_cos(c)
    return margins.straight_through_target(c, t) if margin.straight_through else t

  return target


def _fused_margin_ce_fwd(cos, labels, margin):
  cos = margins.as_compute_dtype(cos)
  s = margin.scale
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  c_t = jnp.sum(jnp.where(is_target, cos, 0.0), axis=-1)
  t = _target_fn(margin)(jnp.clip(c_t, -1.0, 1.0))
  valid = labels >= 0
  clipped = jnp.clip(cos, -1.0, 1.0)
  neg_max = jnp.max(jnp.where(is_target, -jnp.inf, clipped), axis=-1)
  shift = s * jnp.where(valid, jnp.maximum(neg_max, t), neg_max)
  z = jnp.where(is_target, (s * t)[:, None], s * clipped)
  lse = shift + jnp.log(jnp.sum(jnp.exp(z - shift[:, None]), axis=-1))
  count = jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(jnp.where(valid, lse - s * t, 0.0)) / count
  return loss, (cos, labels, c_t, t, lse, count)


def _fused_margin_ce_bwd(margin, residuals, g):
  cos, labels, c_t, t, lse, count = residuals
  s = margin.scale
  _, t_vjp = jax.vjp(_target_fn(margin), jnp.clip(c_t, -1.0, 1.0))
  valid = labels >= 0
  w = jnp.where(valid, g / count, 0.0)
  p_t = jnp.exp(s * t - lse)
  (d_ct,) = t_vjp(w * s * (p_t - 1.0))
  d_ct = jnp.where(jnp.abs(c_t) <= 1.0, d_ct, 0.0)
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  inside = jnp.abs(cos) <= 1.0  # the clip passes no gradient outside [−1, 1]
  d_other = (w * s)[:, None] * jnp.exp(s * cos - lse[:, None])
  d_cos = jnp.where(is_target, d_ct[:, None], jnp.where(inside, d_other, 0.0))
  return d_cos.astype(cos.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_ce(cos: jax.Array, labels: jax.Array, margin: Any) -> jax.Array:
  return _fused_margin_ce_fwd(cos, labels, margin)[0]


_fused_ce.defvjp(_fused_margin_ce_fwd, _fused_margin_ce_bwd)


def fused_margin_cross_entropy(
  cos: jax.Array, labels: jax.Array, margin: margins.CombinedMargin
) -> jax.Array:
  """margin_softmax_cross_entropy(margin(cos, labels), labels) with a hand-written backward.

  Same value and gradient as the composition, but the (B, C) array is read three times forward
  and written once backward, instead of the dozen passes autodiff of the composition takes; the
  margin curve's own derivative still comes from autodiff, on the B target cosines only.
  """
  return _fused_ce(cos, labels, margin)


def angle_metrics(cos: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Mean target angle (degrees), mean target cos and mean hardest-negative cos (no gradient)."""
  cos = jax.lax.stop_gradient(margins.as_compute_dtype(cos))
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  cos_target = jnp.sum(jnp.where(is_target, cos, 0.0), axis=-1)
  hardest = jnp.max(jnp.where(is_target, -jnp.inf, cos), axis=-1)
  theta = jnp.degrees(jnp.arccos(jnp.clip(cos_target, -1.0, 1.0)))
  return {
    'theta_target_deg': theta.mean(),
    'cos_target': cos_target.mean(),
    'cos_hardest_negative': hardest.mean(),
  }


def intra_loss(cos_target: jax.Array) -> jax.Array:
  """ArcFace paper's Intra-loss term: (1/πN) Σ θ_yi, the angle to the own class centre."""
  return jnp.mean(margins.safe_arccos(cos_target)) / jnp.pi


def inter_loss(weight_normed: jax.Array, labels: jax.Array) -> jax.Array:
  """ArcFace paper's Inter-loss term: −(1/(πN(n−1))) Σ_i Σ_{j≠yi} arccos(W_yi · W_j).

  Costs one (B, C) product of the batch's target centres with all centres.
  """
  num_classes = weight_normed.shape[0]
  centre_cos = weight_normed[labels] @ weight_normed.T
  is_own = jnp.arange(num_classes)[None, :] == labels[:, None]
  # Clipped inside arccos, so the masked-out own column (cos = 1) has a finite, zeroed gradient.
  angles = jnp.where(is_own, 0.0, margins.safe_arccos(centre_cos))
  return -jnp.sum(angles) / (jnp.pi * labels.shape[0] * max(num_classes - 1, 1))


def triplet_loss(
  embeddings: jax.Array, labels: jax.Array, margin: float = 0.35
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Angular triplet loss, mean over all anchor-positive pairs of [θ_ap − θ_an + margin]_+.

  Online semi-hard mining within the batch (FaceNet): for each pair (a, p) the negative is the
  closest one still farther than p (θ_an > θ_ap); when none is, the farthest negative. Angles
  θ = arccos(x_a · x_b) of L2-normalised embeddings. Returns (loss, metrics) with the batch's
  anchor-positive cos and hardest-negative cos, the analogues of the target/negative metrics.
  """
  x = l2_normalize(margins.as_compute_dtype(embeddings))
  cos = x @ x.T
  theta = margins.safe_arccos(cos)
  n = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(n, dtype=bool)
  negative = ~same
  # Mining is a choice, not part of the gradient: indices come from stopped angles. Sorting each
  # anchor's negatives keeps memory at (B, B) instead of the (B, B, B) of a brute-force search.
  t = jax.lax.stop_gradient(theta)
  neg_t = jnp.where(negative, t, jnp.inf)
  order = jnp.argsort(neg_t, axis=-1)
  sorted_t = jnp.take_along_axis(neg_t, order, axis=-1)
  num_neg = jnp.sum(negative, axis=-1)
  # First negative strictly farther than the positive, per (anchor, positive).
  first = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side='right'))(sorted_t, t)
  semi_hard = first < num_neg[:, None]
  farthest = jnp.maximum(num_neg - 1, 0)[:, None]
  rank = jnp.where(semi_hard, first, farthest)
  chosen = jnp.take_along_axis(order, jnp.minimum(rank, n - 1), axis=-1)
  theta_an = jnp.take_along_axis(theta, chosen, axis=-1)  # gradient reaches the negative
  valid = positive & (num_neg > 0)[:, None]
  hinge = jnp.maximum(theta - theta_an + margin, 0.0)
  loss = jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  cs = jax.lax.stop_gradient(cos)
  pos_cos = jnp.sum(jnp.where(positive, cs, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
  has_neg = jnp.any(negative, axis=-1)
  neg_cos = jnp.max(jnp.where(negative, cs, -jnp.inf), axis=-1)
  neg_cos = jnp.sum(jnp.where(has_neg, neg_cos, 0.0)) / jnp.maximum(jnp.sum(has_neg), 1)
  metrics = {
    'theta_target_deg': jnp.degrees(jnp.arccos(jnp.clip(pos_cos, -1.0, 1.0))),
    'cos_target': pos_cos,
    'cos_hardest_negative': neg_cos,
  }
  return loss, metrics


def center_loss(
  embeddings: jax.Array, labels: jax.Array, centres: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
  """Centre loss (Wen et al. 2016): ½·mean ||x_i − c_yi||², and the centres moved by rate α.

  Centres are state, not parameters: the loss pulls features only, and each centre present in
  the batch moves as c_j ← c_j − α Σ_{i: y_i=j} (c_j − x_i) / (1 + n_j).
  """
  target = centres[labels]
  diff = embeddings - jax.lax.stop_gradient(target)
  loss = 0.5 * jnp.mean(jnp.sum(diff * diff, axis=-1))
  num = centres.shape[0]
  delta_sum = jax.ops.segment_sum(jax.lax.stop_gradient(target - embeddings), labels, num)
  counts = jax.ops.segment_sum(jnp.ones_like(labels, jnp.float32), labels, num)
  new_centres = centres - alpha * delta_sum / (1.0 + counts)[:, None]
  return loss, new_centres


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
