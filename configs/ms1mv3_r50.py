"""The reference trainer's MS1MV3 recipe: IResNet-50, ArcFace, model-parallel head.

RecordIO `train.rec`/`train.idx`, global batch 1024 (128 per device on 8), SGD momentum 0.9, weight
decay 5e-4, lr 0.1 at batch 1024 scaled linearly with the global batch, linear warm-up (none by
default) then polynomial decay to 0 over the row's epochs, bf16 trunk with fp32 head, backbone
gradient clip 5 (`apply_reference_recipe`). Dataset, sizes, backbone, margin, sample rate and the
published result are its row in configs/recipes.py (the README's recipe table is generated from
it). The class centres are split over the devices (head.model_parallel) and all of them are used
every step (sample_rate 1.0). Commands:

  python -m arcface_jax.train --config configs/ms1mv3_r50.py --workdir runs/ms1mv3_r50 \
      --config.data.path=data/ms1m-retinaface-t1
  sbatch launch/slurm.sbatch configs/ms1mv3_r50.py runs/ms1mv3_r50     # several GPU hosts
  python -m arcface_jax.train --config configs/ms1mv3_r50.py:tiny --workdir /tmp/ms1mv3_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (epochs × images / batch, from configs/recipes.py).
"""

from arcface_jax.config_files import (
  apply_recipe_row,
  load_base,
  recipe_options,
  recipe_row,
  shrink_to_smoke_test,
)


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'tiny'})
  config = load_base(__file__)
  apply_recipe_row(config, recipe_row(__file__, 'ms1mv3_r50'))  # data, backbone, loss, schedule
  if 'tiny' in options:
    shrink_to_smoke_test(config)
    config.head.chunk = 8  # exercises the chunked online softmax
  return config
