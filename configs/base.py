"""Every configuration field of arcface_jax, with its default.

Recipes in this folder start from `get_config()` here and change values; they never add keys.
Because the trainer loads configs with `lock_config=True`, a misspelt command-line override such
as `--config.train.bacth_size=8` is rejected with the name of the unknown key.

Fields documented as "None = paper default" are typed placeholders: they take a value of that type
from the command line, and the code resolves None to the published default of the chosen loss.

Run any recipe with:
  python -m arcface_jax.train --config configs/<recipe>.py --workdir runs/<name>
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the full default configuration (no recipe applied)."""
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0  # the run's one root key (arcface_jax.seeding): weights, head, dropout, data

  # ---------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  # Where training images come from: 'synthetic' (embedded, generated on first use), 'digits'
  # (scikit-learn's digits, the analysis toy), 'recordio'
  # (train.rec + train.idx directory), 'folder' (one sub-folder per identity), 'tfds' (any TFDS
  # data_source with `image` and `label` features).
  data.source = 'synthetic'
  data.path = ''  # recordio / folder directory, or the TFDS name for source='tfds'
  data.data_dir = 'data'  # where TFDS datasets (the synthetic one included) are generated
  data.synthetic_variant = 'demo'  # builder config of the synthetic dataset: 'demo' or 'tiny'
  data.num_classes = 0  # 0 = read from the dataset
  data.image_size = 112  # square side in pixels fed to the backbone
  data.flip = True  # random horizontal flip (the only augmentation of the reference recipes)
  data.rotation_degrees = 0.0  # optional random rotation in [-r, r]
  data.color_jitter = 0.0  # optional brightness/contrast/saturation jitter strength
  data.low_resolution_prob = 0.0  # probability of a down-up resize to simulate low resolution
  data.mean = 127.5  # normalisation (x - mean) / std
  data.std = 127.5
  data.num_workers = 0  # grain worker processes (0 = threads in this process)
  data.prefetch = 2  # batches prepared ahead of the device
  # Decoded images kept in memory when the whole dataset fits in this many MiB (the demo's, a
  # fine-tuning set): decoded in the first epoch only. 0 = decode every time. Reader threads only.
  data.cache_mib = 1024
  # K > 0: batches of P identities x K images each (triplet / intra / inter need positives)
  data.images_per_identity = 0
  # Folder datasets: deterministic stratified splits.
  data.split_by = 'identity'  # 'identity' (open-set) or 'image' (closed-set)
  data.val_fraction = 0.0
  data.test_fraction = 0.0
  data.split_seed = 0  # which identities/images are held out (independent of config.seed)
  # A file listing training images to leave out ('' = none): indices into the training split
  # (or folder-relative paths), e.g. the flagged.tsv of python -m arcface_jax.subcenter_clean.
  data.exclude = ''

  # ---------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  model.name = 'iresnet50'
  model.embedding_dim = 512
  model.dropout = 0.0
  model.dtype = 'float32'  # trunk compute dtype: 'float32' or 'bfloat16'; embeddings stay fp32
  # Pretrained backbone to start from ('' = none): a training workdir, an import_onnx directory,
  # an .onnx file, or an http(s)/file URL of one (arcface_jax/init_from.py). Only at the start of
  # a run: resuming from the workdir's own checkpoint wins. The classifier head starts fresh.
  model.init_from = ''
  model.init_from_sha256 = ''  # checksum of a URL's file (or give it as URL#sha256=HEX)

  # ---------------------------------------------------------------- loss
  config.loss = loss = ml_collections.ConfigDict()
  # softmax | norm_softmax | sphereface | cosface | arcface | combined | triplet | subcenter |
  # curricularface | magface | adaface | elasticface_arc | elasticface_cos
  loss.name = 'arcface'
  loss.s = config_dict.placeholder(float)  # scale; None = paper default (64)
  loss.m = config_dict.placeholder(float)  # margin; None = paper default for loss.name
  loss.m1 = config_dict.placeholder(float)  # combined margin cos(m1*theta + m2) - m3
  loss.m2 = config_dict.placeholder(float)
  loss.m3 = config_dict.placeholder(float)
  # Apply the angular margin only where cos(theta) > 0; None = the loss's default (False; True for
  # magface, as its official code).
  loss.easy_margin = config_dict.placeholder(bool)
  loss.straight_through = False  # margin changes the value, not the gradient
  # SphereFace (A-softmax) softmax blend: lambda = max(min, base * (1 + gamma * step) ** -power)
  loss.sphereface_lambda_base = 1000.0
  loss.sphereface_lambda_gamma = 0.12
  loss.sphereface_lambda_power = 1.0
  loss.sphereface_lambda_min = 5.0
  # Later margins (None = the paper's default; see arcface_jax.margins).
  loss.momentum = config_dict.placeholder(float)  # curricularface t, adaface norm statistics: 0.99
  loss.h = config_dict.placeholder(float)  # adaface: 0.333
  loss.l_a = config_dict.placeholder(float)  # magface norm bounds [l_a, u_a]: 10, 110
  loss.u_a = config_dict.placeholder(float)
  loss.l_m = config_dict.placeholder(float)  # magface margin bounds [l_m, u_m]: 0.45, 0.8
  loss.u_m = config_dict.placeholder(float)
  loss.lambda_g = config_dict.placeholder(float)  # magface regulariser weight: 35
  loss.sigma = config_dict.placeholder(float)  # elasticface_*: 0.05 (plus: 0.0175 arc, 0.02 cos)
  loss.plus = config_dict.placeholder(bool)  # elasticface_*: sort the margins by difficulty
  # Auxiliary objectives added to the margin softmax, by weight (0 = off).
  loss.intra_weight = 0.0
  loss.inter_weight = 0.0
  loss.triplet_weight = 0.0
  loss.triplet_margin = 0.35
  loss.center_weight = 0.0
  loss.center_alpha = 0.5

  # ---------------------------------------------------------------- classifier head
  config.head = head = ml_collections.ConfigDict()
  head.model_parallel = False  # split the class centres over devices (Partial FC machinery)
  head.sample_rate = 1.0  # Partial FC: fraction of each device's centres used per step
  head.chunk = 0  # classes per chunk of the online softmax (0 = unchunked)
  head.lazy_update = False  # optimizer touches only the sampled centres
  # Class centres ~ N(0, init_std²): the reference's 0.01. Normalised losses see only directions,
  # but a centre's gradient scales with 1/‖w‖, so tiny norms turn the first steps into jumps.
  head.init_std = 0.01
  # Sub-centres per class, centres stored (C, K, D) when K > 1; None = 3 for loss.name='subcenter',
  # else 1. After `python -m arcface_jax.subcenter_clean` continue with K = 1.
  head.subcenters = config_dict.placeholder(int)
  # A (C, D) .npy to start the centres from (subcenter_clean's dominant_centres.npy); None: random.
  head.init_centres = config_dict.placeholder(str)

  # ---------------------------------------------------------------- training
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 512  # global batch, split over all devices
  train.num_steps = 180_000
  train.learning_rate = 0.1
  train.schedule = 'step'  # 'step' (paper) or 'warmup_poly' (current reference)
  train.lr_boundaries = (100_000, 160_000)  # 'step': multiply by lr_decay_factor at these steps
  train.lr_decay_factor = 0.1
  train.warmup_steps = 0  # 'warmup_poly': linear warm-up, then polynomial decay to 0
  train.poly_power = 1.0
  train.momentum = 0.9
  train.weight_decay = 5e-4
  train.clip_grad_norm = 5.0  # backbone gradient-norm clip (0 = off)
  train.log_every = 100
  train.checkpoint_every = 2_000
  train.keep_checkpoints = 3
  train.max_consecutive_bad_steps = 20  # abort after this many non-finite steps in a row
  # Transfer learning (arcface_jax/optim.py). Regular expressions, re.search'ed on the '/'-joined
  # parameter paths 'backbone/<Flax module path>/<name>' (e.g. backbone/IBasicBlock_0/Conv_0/kernel)
  # and 'head/weight'; an expression matching nothing is an error.
  train.freeze = ()  # frozen parameters: no update, no optimizer state, e.g. ('^backbone/',)
  # Batch norms whose parameters are all frozen run in eval mode (running statistics, not updated).
  train.freeze_batch_stats = False
  train.lr_multipliers = ()  # 'REGEX=FACTOR': the first match scales the rate, e.g. ('^head/=10',)

  # ---------------------------------------------------------------- evaluation
  config.eval = ev = ml_collections.ConfigDict()
  ev.every_steps = 2_000  # 0 = only at the end
  # Evaluators by name (arcface_jax.evaluation.evaluators): verification, ijb, identification
  # (and test, which only `python -m arcface_jax.evaluate` runs). Each reads its options below.
  ev.evaluators = ('verification',)
  # verification: held-out synthetic / val pairs and .bin sets, the 10-fold protocol.
  ev.synthetic_pairs = 0  # held-out pairs of the synthetic dataset (0 = none)
  ev.val_pairs = 0  # pairs from the 'val' split of a folder / TFDS dataset (0 = none)
  ev.bins = ()  # verification sets: names (lfw, cfp_fp, agedb_30, ...) or .bin paths
  ev.bin_dir = 'data'  # where names in `bins` are looked up as <name>.bin
  ev.batch_size = 256
  ev.nfolds = 10
  ev.ijb = ml_collections.ConfigDict()  # ijb: IJB-B/C 1:1 TAR@FAR
  ev.ijb.dir = ''  # the IJB root (meta/, loose_crop/)
  ev.ijb.target = 'IJBC'  # or 'IJBB'
  ev.identification = ml_collections.ConfigDict()  # identification: 1:N rank-1/5 and DIR@FAR
  ev.identification.gallery = ''  # folder, one sub-folder per identity
  ev.identification.probe = ''  # folder, one sub-folder per identity (unknown ones non-mated)
  return config
