"""The paper's MS1MV2 recipe: row `ms1m` of configs/recipes.py (data, backbone, margin, schedule).

SGD momentum 0.9, weight decay 5e-4, 128 images per device on 4 GPUs, the learning rate divided
by 10 twice (boundaries and steps in the table). `:poly` switches to the current reference
schedule (linear warm-up, then polynomial decay to 0). Training reads `train.rec`/`train.idx`
(MS1M-style RecordIO) from data.path. Commands:

  python -m arcface_jax.train --config configs/ms1m.py --workdir runs/ms1m \
      --config.data.path=data/faces_emore
  python -m arcface_jax.train --config configs/ms1m.py:poly --workdir runs/ms1m_poly
  python -m arcface_jax.train --config configs/ms1m.py:tiny --workdir /tmp/ms1m_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

With more devices, scale the batch and learning rate together (the reference scales lr linearly
with the global batch: 0.1 at 1024).
"""

from arcface_jax.config_files import (
  apply_recipe_row,
  load_base,
  recipe_options,
  recipe_row,
  shrink_to_smoke_test,
)


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'poly', 'tiny'})
  config = load_base(__file__)
  apply_recipe_row(config, recipe_row(__file__, 'ms1m'))  # data, backbone, loss, schedule
  config.model.dtype = 'bfloat16'
  # The class centres split over the devices (every centre used each step, sample_rate 1.0).
  config.head.model_parallel = True
  if 'poly' in options:
    config.train.schedule = 'warmup_poly'
    config.train.warmup_steps = 2_000
  if 'tiny' in options:
    shrink_to_smoke_test(config)
  return config
