"""The model-parallel classifier head the trainer uses when config.head.model_parallel is true.

`ModelParallelObjective` has the interface of `losses.Objective` (init / __call__), so the train
step is unchanged; its class centres are a (C_pad, D) matrix split by rows over the mesh's `data`
axis (softmax.py), and `state_shardings` tells the trainer to keep them, and every optimizer leaf
of their shape, split the same way — in memory, in the step and in checkpoints.

C_pad rounds C up to a multiple of lcm(W, 128) for W devices rather than of W alone: for every
power-of-two device count up to 128 it is then the same number, so a checkpoint written on 8
devices restores on 4 or 16 (orbax reshards on restore). The at most 127 extra rows (on the last
devices) are zero, masked out of the softmax, and get no gradient.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from arcface_jax import margins
from arcface_jax.class_centres import initial_centres
from arcface_jax.parallel import chunked, softmax
from arcface_jax.parallel.mesh import DATA_AXIS, replicated

PAD_MULTIPLE = 128
HEAD_KEY = 'head'


def padded_num_classes(num_classes: int, num_devices: int) -> int:
  """Rows of the stored centre matrix for `num_classes` classes on `num_devices` devices."""
  return softmax.padded_size(num_classes, math.lcm(num_devices, PAD_MULTIPLE))


def param_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  """NamedShardings of the head params: centres split by class (rows) over `data`."""
  return {'weight': NamedSharding(mesh, P(DATA_AXIS, None))}


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings for a whole train state: head centres and their optimizer leaves split, rest replicated.

  A leaf is split by rows when its path passes through a 'head' dict key and no 'backbone' key
  (params['head'], and the head's subtree inside every optax state: momentum traces, masked and
  multi_transform states) and its leading dimension is the centre matrix's. Everything else
  (backbone, counters) is replicated.
  """
  weight = _head_weight(abstract_state)
  rows = NamedSharding(mesh, P(DATA_AXIS))

  def choose(path, leaf):
    keys = {k.key for k in path if isinstance(k, jax.tree_util.DictKey)}
    shape = getattr(leaf, 'shape', ())
    if (
      HEAD_KEY in keys
      and 'backbone' not in keys
      and len(shape) >= 1
      and shape[0] == weight.shape[0]
    ):
      return rows
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(choose, abstract_state)


def _head_weight(abstract_state: Any) -> Any:
  params = getattr(abstract_state, 'params', abstract_state)
  try:
    return params[HEAD_KEY]['weight']
  except (KeyError, TypeError):
    raise ValueError(
      'state_shardings expects params with a head subtree holding the centre '
      "matrix at ['head']['weight']"
    ) from None


@dataclasses.dataclass(frozen=True, init=False)
class ModelParallelObjective:
  """Margin softmax over centres split across `mesh`, with Partial FC and chunking options.

  loss_config: config.loss (a margin loss: every margin but sphereface; no auxiliary terms).
  head_config: config.head (sample_rate, chunk, subcenters; model_parallel and lazy_update are
  read by the trainer and optimizer). Metrics: loss, softmax_loss, theta_target_deg, cos_target,
  cos_hardest_negative (the last over the centres used in the step), and sample_rate.

  Margins with state or per-row parameters are prepared here, outside the per-device body, from
  the global batch: the target cosines (a (B, D) gather of the target centres), the embeddings'
  norms and the step's key `rng`; the new state is the same on every device.
  """

  margin: Any
  num_classes: int
  embedding_dim: int
  mesh: Mesh
  sample_rate: float = 1.0
  chunk: int = 0
  seed: int = 0
  subcenters: int = 1
  init_std: float = 0.01
  init_centres: str | None = None

  def __init__(
    self,
    loss_config: Any,
    head_config: Any,
    *,
    num_classes: int,
    embedding_dim: int,
    mesh: Mesh,
    seed: int = 0,
  ):
    _check_loss_config(loss_config)
    margin = margins.from_config(loss_config)
    softmax.check_margin(margin)
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_('margin', margin)
    set_('num_classes', int(num_classes))
    set_('embedding_dim', int(embedding_dim))
    set_('mesh', mesh)
    set_('sample_rate', float(head_config.sample_rate))
    set_('chunk', int(head_config.chunk))
    set_('seed', int(seed))
    set_('init_std', float(head_config.init_std))
    set_('subcenters', margins.subcenters_for(loss_config.name, head_config.get('subcenters')))
    set_('init_centres', head_config.get('init_centres') or None)
    if not 0.0 < self.sample_rate <= 1.0:
      raise ValueError(f'config.head.sample_rate={self.sample_rate} must be in (0, 1]')
    if self.chunk < 0:
      raise ValueError(f'config.head.chunk={self.chunk} must be >= 0 (0 = unchunked)')

  @property
  def num_padded_classes(self) -> int:
    return padded_num_classes(self.num_classes, self.mesh.shape[DATA_AXIS])

  def init(self, rng: jax.Array) -> tuple[dict, dict]:
    """Centres ~ N(0, init_std²) for the C real classes (as losses.Objective), zero padding
    rows."""
    sub = (self.subcenters,) if self.subcenters > 1 else ()
    weight = self.init_std * jax.random.normal(
      rng, (self.num_classes,) + sub + (self.embedding_dim,), jnp.float32
    )
    if self.init_centres:
      weight = jnp.asarray(initial_centres(self.init_centres, weight.shape))
    pad = ((0, self.num_padded_classes - self.num_classes),) + ((0, 0),) * (weight.ndim - 1)
    margin_state = self.margin.init_state()
    return {'weight': jnp.pad(weight, pad)}, ({'margin': margin_state} if margin_state else {})

  def __call__(
    self,
    head_params: dict,
    head_state: dict,
    embeddings: jax.Array,
    labels: jax.Array,
    step: jax.Array,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    embeddings = margins.as_compute_dtype(embeddings)
    labels = labels.astype(jnp.int32)
    rows, margin_state = {}, dict(head_state.get('margin', {}))
    norms = jnp.sqrt(jnp.maximum(jnp.sum(embeddings * embeddings, axis=-1), 1e-12))
    if not isinstance(self.margin, margins.Stateless):
      target_cos = _global_target_cos(head_params['weight'], embeddings, labels)
      rows, margin_state = self.margin.prepare(
        target_cos, labels >= 0, state=margin_state, norms=norms, rng=rng
      )
    out = softmax.margin_softmax(
      head_params['weight'],
      embeddings,
      labels,
      margin=self.margin,
      mesh=self.mesh,
      num_classes=self.num_classes,
      sample_rate=self.sample_rate,
      key=key,
      chunk=self.chunk,
      margin_rows=rows,
    )
    metrics = dict(
      out.metrics, softmax_loss=out.loss, sample_rate=jnp.asarray(self.sample_rate, jnp.float32)
    )
    loss = out.loss
    if not isinstance(self.margin, margins.Stateless):
      loss, metrics = margins.add_loss_terms(self.margin, margin_state, norms, loss, metrics)
    new_state = dict(head_state)
    if margin_state:
      new_state['margin'] = margin_state
    metrics['loss'] = loss
    return loss, new_state, metrics


def _global_target_cos(weight: jax.Array, embeddings: jax.Array, labels: jax.Array) -> jax.Array:
  """cos θ_y of every row of the global batch (no gradient): the B target centres gathered from
  the split matrix (XLA moves B rows, not the matrix), the max over sub-centres when K > 1."""
  x_n = chunked.l2_normalize(jax.lax.stop_gradient(embeddings))
  w_t = chunked.l2_normalize(jax.lax.stop_gradient(weight)[labels])
  if w_t.ndim == 3:
    return jnp.max(jnp.einsum('bd,bkd->bk', x_n, w_t), axis=-1)
  return jnp.sum(x_n * w_t, axis=-1)


def _check_loss_config(loss_config: Any) -> None:
  name = loss_config.name
  if name in ('softmax', 'triplet', 'sphereface'):
    reason = {
      'softmax': 'plain softmax has unnormalised centres and a bias',
      'triplet': 'triplet loss has no class centres',
      'sphereface': "A-softmax scales logits by each feature's norm",
    }[name]
    raise ValueError(
      f"loss.name={name!r} does not run on the model-parallel head ({reason}): "
      'set head.model_parallel=False'
      + (", or use loss.name='combined' with m1=1.35" if name == 'sphereface' else '')
    )
  auxiliary = [
    k
    for k in ('intra_weight', 'inter_weight', 'triplet_weight', 'center_weight')
    if float(loss_config[k]) > 0
  ]
  if auxiliary:
    raise ValueError(
      f'loss.{", loss.".join(auxiliary)} > 0: auxiliary terms need the whole '
      'centre matrix on one device; set head.model_parallel=False'
    )
