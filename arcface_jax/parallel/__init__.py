"""Device meshes and sharded computation.

The trainer lays every device on one mesh axis, `data`: the global batch is split over it, and the
model-parallel classifier splits its class centres over the same axis.
"""

from arcface_jax.parallel.head import ModelParallelObjective, param_shardings, state_shardings
from arcface_jax.parallel.lazy import lazy_sgd
from arcface_jax.parallel.mesh import DATA_AXIS, batch_sharding, global_batch, make_mesh, replicated
from arcface_jax.parallel.softmax import margin_softmax, margin_softmax_loss

__all__ = [
  'DATA_AXIS',
  'batch_sharding',
  'global_batch',
  'make_mesh',
  'replicated',
  'margin_softmax',
  'margin_softmax_loss',
  'ModelParallelObjective',
  'param_shardings',
  'state_shardings',
  'lazy_sgd',
]
