"""One training step of a tiny model with the model-parallel head; run by test_multiprocess.py.

  python tests/multiprocess_step.py OUT.npz

Started either as one process owning every device, or as one of several processes joined through
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (arcface_jax.distributed). Each
process feeds only its own rows of a fixed global batch (parallel.global_batch); process 0 writes
the loss and every parameter after the step, gathered to the host, to OUT.npz.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from arcface_jax import distributed, models, optim, parallel, seeding  # noqa: E402
from arcface_jax.config_files import load_base  # noqa: E402
from arcface_jax.train_state import create_train_state  # noqa: E402
from arcface_jax.train_step import make_train_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH, IMAGE, CLASSES, DIM = 8, 8, 20, 8


def main(out: str) -> None:
  distributed.initialize_if_launched()
  config = load_base(os.path.join(REPO, 'configs', 'base.py'))
  config.head.model_parallel = True
  config.head.sample_rate = 0.5  # the per-device draws must agree across the process split too
  config.head.lazy_update = True
  config.train.learning_rate = 0.1
  mesh = parallel.make_mesh()
  model = models.get('small_cnn', embedding_dim=DIM)
  objective = parallel.ModelParallelObjective(
    config.loss, config.head, num_classes=CLASSES, embedding_dim=DIM, mesh=mesh, seed=0
  )
  schedule = optim.make_schedule(config.train)
  tx = optim.make_optimizer(config.train, lazy_head=True)
  init = lambda rng: create_train_state(rng, model, objective, tx, IMAGE)
  abstract = jax.eval_shape(init, seeding.keys(0))
  shardings = parallel.state_shardings(abstract, mesh)
  state = jax.jit(init, out_shardings=shardings)(seeding.keys(0))
  step = jax.jit(
    make_train_step(model, objective, tx, schedule, jax.random.PRNGKey(1)),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
  )

  rng = np.random.default_rng(0)
  images = rng.normal(size=(GLOBAL_BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
  labels = rng.integers(0, CLASSES, GLOBAL_BATCH).astype(np.int32)
  rows = GLOBAL_BATCH // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  batch = parallel.global_batch(mesh, {'image': images[mine], 'label': labels[mine]})
  state, metrics = step(state, batch)

  # Replicate everything so each process holds whole arrays, then read them on the host.
  gathered = jax.jit(lambda t: t, out_shardings=parallel.replicated(mesh))(
    (state.params, metrics['loss'])
  )
  params, loss = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), gathered)
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out, loss=loss, num_processes=jax.process_count(), **flat)


if __name__ == '__main__':
  main(sys.argv[1])
