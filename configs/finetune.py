"""Fine-tune a pretrained MobileFaceNet on your own people (a small dataset, closed set).

  faces/<person>/<photo>.{jpg,jpeg,png,bmp}      (aligned 112×112 crops; see configs/folder.py)

Every person is trained on; their photos are split by image, stratified per person and stable
across runs (`config.data.split_seed`): 10% for test, and of the other 90%, 88% to train on and
12% for validation (pairs scored during training: `[val][step] Accuracy-Flip`). As fractions of
the whole: test 0.10, val 0.9 × 0.12 = 0.108, train 0.792. Augmentation: horizontal flip and
rotation by up to ±10°. The backbone comes from `config.model.init_from` (required: a training
workdir, an import_onnx directory, an insightface-layout .onnx file or a checksummed URL of one);
the classifier head starts fresh for your people and learns 10× faster than the backbone. SGD
with momentum 0.9. Commands:

  python -m arcface_jax.train --config configs/finetune.py --workdir runs/mine \
      --config.data.path=faces --config.model.init_from=runs/ms1m_mbf
  python -m arcface_jax.evaluate --workdir runs/mine --test            # closed-set top-1 on test
  python -m arcface_jax.search --config configs/finetune.py --workdir runs/grid \
      --config.data.path=faces --config.model.init_from=runs/ms1m_mbf \
      --grid train.learning_rate=1e-3,1e-2,1e-1 --grid train.momentum=0.5,0.9,0.99

With very few photos per person, train only the head and keep the backbone's batch statistics:
  --config.train.freeze="('^backbone/',)" --config.train.freeze_batch_stats=True

`:tiny` is the same recipe at test size (16-px images, iresnet_tiny with 32-d embeddings, a few
steps); its tests start from a model they train themselves, as nothing can be downloaded there.
"""

from arcface_jax.config_files import load_base, recipe_options, shrink_to_smoke_test

TEST_FRACTION = 0.10
VAL_OF_TRAIN = 0.12  # of the images left after the test split


def get_config(arg: str | None = None):
  options = recipe_options(__file__, arg, {'tiny'})
  config = load_base(__file__)
  config.data.source = 'folder'
  config.data.path = ''  # required: --config.data.path=/path/to/faces
  config.data.split_by = 'image'
  config.data.test_fraction = TEST_FRACTION
  # FolderDataset's fractions are of the whole folder: 12% of the remaining 90%.
  config.data.val_fraction = (1.0 - TEST_FRACTION) * VAL_OF_TRAIN
  config.data.image_size = 112
  config.data.flip = True
  config.data.rotation_degrees = 10.0
  config.model.name = 'mobilefacenet'
  config.model.embedding_dim = 512
  config.model.init_from = ''  # required: --config.model.init_from=PRETRAINED
  config.loss.name = 'arcface'
  config.loss.s = 64.0
  config.loss.m = 0.5
  config.train.batch_size = 64
  config.train.num_steps = 2_000
  config.train.learning_rate = 0.01
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 100
  config.train.lr_multipliers = ('^head/=10',)  # new classes: the head starts from random
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.eval.every_steps = 500
  config.eval.val_pairs = 1_000
  if 'tiny' in options:
    shrink_to_smoke_test(config)
    config.train.batch_size = 8  # the test trees leave about a dozen training photos
    config.train.num_steps = 4
    config.train.schedule = 'step'
    config.train.log_every = 2
    # The tests' trees hold a handful of photos per person (4 in tests/test_configs.py): half of
    # them for val gives every person two val photos, so same-person pairs exist.
    config.data.val_fraction = 0.5
    config.eval.val_pairs = 40
    config.eval.batch_size = 32
  return config
