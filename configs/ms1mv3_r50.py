"""The reference trainer's MS1MV3 recipe: IResNet-50, ArcFace s=64 m=0.5, model-parallel head.

MS1MV3 (93,431 identities, 5,179,510 images, RecordIO `train.rec`/`train.idx`), global batch 1024
(128 per device on 8), SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 1024 scaled linearly
with the global batch, linear warm-up (none by default) then polynomial decay to 0 over 20 epochs,
bf16 trunk with fp32 head, backbone gradient clip 5. The class centres are split over the devices
(head.model_parallel) and all of them are used every step (sample_rate 1.0). Published: IJB-C
TAR@FAR=1e-4 96.37 (REFERENCE §7). Commands:

  python -m arcface_jax.train --config configs/ms1mv3_r50.py --workdir runs/ms1mv3_r50 \
      --config.data.path=data/ms1m-retinaface-t1
  sbatch launch/slurm.sbatch configs/ms1mv3_r50.py runs/ms1mv3_r50     # several GPU hosts
  python -m arcface_jax.train --config configs/ms1mv3_r50.py:tiny --workdir /tmp/ms1mv3_smoke \
      --config.data.path=PATH_TO_A_SMALL_PACKED_RECORDIO          # CPU smoke run, seconds

Changing --config.train.batch_size? Pass the matching --config.train.learning_rate (0.1 per 1024)
and --config.train.num_steps (20 × 5,179,510 / batch).
"""
from arcface_jax.config_files import load_base

NUM_IMAGES = 5_179_510
NUM_CLASSES = 93_431
EPOCHS = 20
BATCH = 1024


def get_config(arg: str | None = None):
  config = load_base(__file__)
  config.data.source = 'recordio'
  config.data.path = 'data/ms1m-retinaface-t1'
  config.data.num_classes = NUM_CLASSES
  config.data.image_size = 112
  config.model.name = 'iresnet50'
  config.model.embedding_dim = 512
  config.model.dtype = 'bfloat16'
  config.loss.name = 'arcface'
  config.loss.s = 64.0
  config.loss.m = 0.5
  config.head.model_parallel = True
  config.head.sample_rate = 1.0
  config.train.batch_size = BATCH
  config.train.learning_rate = 0.1 * BATCH / 1024
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 0
  config.train.num_steps = EPOCHS * (NUM_IMAGES // BATCH)
  config.train.weight_decay = 5e-4
  config.train.momentum = 0.9
  config.train.clip_grad_norm = 5.0
  config.train.checkpoint_every = 2_000
  config.eval.every_steps = 2_000
  config.eval.bins = ('lfw', 'cfp_fp', 'agedb_30')
  config.eval.bin_dir = config.data.get_ref('path')  # follows --config.data.path
  if arg == 'tiny':
    config.data.num_classes = 0  # read from the small dataset
    config.data.image_size = 16
    config.model.name = 'iresnet_tiny'
    config.model.embedding_dim = 32
    config.model.dtype = 'float32'
    config.head.chunk = 8  # exercises the chunked online softmax
    config.train.batch_size = 16
    config.train.learning_rate = 0.1 * 16 / 1024
    config.train.num_steps = 3
    config.train.log_every = 1
    config.train.checkpoint_every = 0
    config.eval.every_steps = 0
    config.eval.bins = ()
  elif arg:
    raise ValueError(f'configs/ms1mv3_r50.py: unknown variant {arg!r}; use no argument or :tiny')
  return config
