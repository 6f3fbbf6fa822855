"""Device meshes and sharded computation.

The trainer lays every device on one mesh axis, `data`: the global batch is split over it, and the
model-parallel classifier splits its class centres over the same axis.
"""
from arcface_jax.parallel.mesh import DATA_AXIS, batch_sharding, global_batch, make_mesh, replicated

__all__ = ['DATA_AXIS', 'batch_sharding', 'global_batch', 'make_mesh', 'replicated']
