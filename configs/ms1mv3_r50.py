"""The reference trainer's MS1MV3 recipe: IResNet-50, ArcFace s=64 m=0.5, model-parallel head.

MS1MV3 (93,431 identities, 5,179,510 images, RecordIO `train.rec`/`train.idx`), global batch 1024
(128 per device on 8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 1024 scaled linearly
with the global batch, linear warm-up (none by default) then polynomial decay to 0 over 20 epochs,
bf16 trunk with fp32 head, backbone gradient clip 5 (`apply_reference_recipe`). The class centres
are split over the devices (head.model_parallel) and all of them are used every step (sample_rate
1.0). Published: IJB-C TAR@FAR=1e-4 96.37 (REFERENCE §7). Commands:

  python -m arcface_jax.train --config configs/ms1mv3_r50.py --workdir runs/ms1mv3_r50 \
      --config.data.path=data/ms1m-retinaface-t1
  sbatch launch/slurm.sbatch configs/ms1mv3_r50.py runs/ms1mv3_r50     # several GPU hosts
  python -m arcface_jax.train --config configs/ms1mv3_r50.py:tiny --workdir /tmp/ms1mv3_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (20 × 5,179,510 / batch).
"""
from arcface_jax.config_files import (apply_reference_recipe, load_base, recipe_options,
                                      shrink_to_smoke_test)


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'tiny'})
  config = load_base(__file__)
  apply_reference_recipe(config, num_images=5_179_510, num_classes=93_431)
  config.data.path = 'data/ms1m-retinaface-t1'
  config.model.name = 'iresnet50'
  config.loss.name = 'arcface'
  config.loss.m = 0.5
  config.head.sample_rate = 1.0
  if 'tiny' in options:
    shrink_to_smoke_test(config)
    config.head.chunk = 8  # exercises the chunked online softmax
  return config
