"""The published training recipes, one row each: the one place their numbers are written.

The recipe files (configs/ms1m.py, casia.py, ms1mv3_r50.py, glint360k_r100.py, webface42m_r100.py)
read their row from here (`config_files.apply_recipe_row`); the README's recipe table is
generated from it (`python -m arcface_jax.recipes_table --write README.md`) and a test checks the
committed table matches. Sources: Deng et al., ArcFace, CVPR 2019 (the paper's MS1MV2 and CASIA
recipes and results) and insightface's arcface_torch (the reference trainer's recipes and its
published IJB-C results).

Per row: the dataset (name, RecordIO path, images, identities), the backbone, the loss and its
margin (`loss` fields), Partial FC's sample rate, the global batch, learning rate and schedule
(`step` with boundaries and steps, or the reference trainer's `warmup_poly` over `epochs` with
the rate scaled linearly from 0.1 at batch 1024), and the published result.
"""

RECIPES = {
  'ms1m': dict(
    source='ArcFace paper',
    dataset='MS1MV2',
    path='data/faces_emore',
    images=5_822_653,
    identities=85_742,
    backbone='iresnet100',
    loss=dict(name='arcface', s=64.0, m=0.5),
    sample_rate=1.0,
    batch=512,
    lr=0.1,
    schedule='step',
    lr_boundaries=(100_000, 160_000),
    steps=180_000,
    published='LFW 99.83, CFP-FP 98.37, AgeDB-30 98.15, IJB-C TAR@FAR=1e-4 95.6',
  ),
  'casia': dict(
    source='ArcFace paper, loss comparison',
    dataset='CASIA-WebFace',
    path='data/faces_webface_112x112',
    images=None,
    identities=None,  # read from the data
    backbone='iresnet50',
    loss=dict(name='arcface', s=64.0, m=0.5),
    sample_rate=1.0,
    batch=512,
    lr=0.1,
    schedule='step',
    lr_boundaries=(20_000, 28_000),
    steps=32_000,
    published='LFW 99.53, CFP-FP 95.56, AgeDB-30 95.15 with ArcFace m=0.5',
  ),
  'ms1mv3_r50': dict(
    source='arcface_torch',
    dataset='MS1MV3',
    path='data/ms1m-retinaface-t1',
    images=5_179_510,
    identities=93_431,
    backbone='iresnet50',
    loss=dict(name='arcface', s=64.0, m=0.5),
    sample_rate=1.0,
    batch=1024,
    lr=0.1,
    schedule='warmup_poly',
    epochs=20,
    published='IJB-C TAR@FAR=1e-4 96.37',
  ),
  'glint360k_r100': dict(
    source='arcface_torch',
    dataset='Glint360K',
    path='data/glint360k',
    images=17_091_657,
    identities=360_232,
    backbone='iresnet100',
    loss=dict(name='cosface', s=64.0, m=0.4),
    sample_rate=0.1,
    batch=1024,
    lr=0.1,
    schedule='warmup_poly',
    epochs=20,
    published='IJB-C TAR@FAR=1e-4 97.55',
  ),
  'webface42m_r100': dict(
    source='arcface_torch',
    dataset='WebFace42M',
    path='data/WebFace42M',
    images=42_474_557,
    identities=2_059_906,
    backbone='iresnet100',
    loss=dict(name='arcface', s=64.0, m=0.5),
    sample_rate=0.2,
    batch=1024,
    lr=0.1,
    schedule='warmup_poly',
    epochs=20,
    published='IJB-C TAR@FAR=1e-4 97.70',
  ),
}
