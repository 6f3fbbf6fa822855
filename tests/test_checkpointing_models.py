"""Every registry backbone round-trips: train, checkpoint, evaluate, export and embed.

Each model trains one step at the smallest input it takes (16×16 for most) on the synthetic
identities, so a model without batch norm (`mini_network`: no `batch_stats`) and the deep ones
go through the same restore paths as the demo's. The deeper ones are marked `slow`
(`make test-slow`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from arcface_jax import config_checks, evaluate, export, inference, models, parallel, trainer
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


# The deeper backbones go through the same restore paths as their shallow siblings (iresnet_tiny
# and mobilefacenet: the variable trees differ only in depth and width) but take one to several
# minutes each on a 2-core CPU: `make test-slow`.
DEEP = (
  'iresnet18',
  'iresnet34',
  'iresnet50',
  'iresnet100',
  'iresnet200',
  'resnet50',
  'mobilefacenet_x2',
)


@pytest.mark.parametrize(
  'name',
  [pytest.param(name, marks=pytest.mark.slow) if name in DEEP else name for name in models.names()],
)
def test_every_model_trains_checkpoints_evaluates_exports_and_embeds(
  name, tmp_path, tmp_path_factory
):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  config.model.name = name
  size = config_checks.min_image_size(name)  # 16 for most; resnet50 downsamples 32×
  config.data.image_size = size
  config.train.batch_size = 8
  config.train.num_steps = 1
  config.train.checkpoint_every = 1
  config.eval.synthetic_pairs = 20
  config.eval.batch_size = 16
  workdir = str(tmp_path / 'run')
  mesh = parallel.make_mesh(1)
  state = jax.device_get(trainer.train_and_evaluate(config, workdir, mesh=mesh))
  assert int(state.step) == 1
  trained = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}

  results = evaluate.evaluate_run(workdir)
  assert os.path.exists(results['path'])

  embedder = inference.load_embedder(workdir, mesh=mesh)
  assert embedder.step == 1
  images = np.random.default_rng(0).normal(size=(3, size, size, 3)).astype(np.float32)
  embedded = np.asarray(embedder.apply(images))
  # Jitted: op by op, a MobileFaceNet's forward dispatches (and compiles) hundreds of small ops.
  model = models.from_config(config)
  expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(trained, images))
  np.testing.assert_allclose(embedded, expected, rtol=1e-5, atol=1e-5)

  path = str(tmp_path / 'backbone.jax_export')
  export.main(['--workdir', workdir, '--out', path, '--platforms', 'cpu'])
  np.testing.assert_allclose(np.asarray(export.load(path)(images)), expected, rtol=1e-4, atol=1e-4)

  from analysis.runs import Run

  restored = Run(workdir, mesh=mesh).variables(1)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), b)
