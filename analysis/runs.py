"""Reading a training run for the figures: its config, checkpoints, class centres and features.

A run is a training workdir, read only through the library's loading API
(`arcface_jax.inference`, `arcface_jax.reporting.read_config`), never its checkpoint layout.
`Run` restores the backbone of any checkpoint onto one compiled embedding function (so several
checkpoints cost one compilation), reads the class centres, and draws the images the figures embed: a fixed
sample of the training source and the held-out verification pairs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from arcface_jax import inference, models, parallel, reporting
from arcface_jax.evaluation.extract import extract_embeddings

if TYPE_CHECKING:
  from arcface_jax.data.sources import Source


def run_label(workdir: str, config: ml_collections.ConfigDict | None = None) -> str:
  """'<workdir name> (<loss>)', the name a run has in legends."""
  config = reporting.read_config(workdir) if config is None else config
  name = os.path.basename(os.path.normpath(workdir))
  return name if name == config.loss.name else f'{name} ({config.loss.name})'


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, H, W, 3) → (N, size, size, 3), as the input pipeline resizes."""
  if images.shape[1] == size and images.shape[2] == size:
    return images
  from arcface_jax.data.decode import resize

  return np.stack([resize(image, (size, size)) for image in images])


class Run:
  """One workdir: config, checkpoint steps, and embeddings of images at any checkpoint."""

  def __init__(self, workdir: str, mesh: jax.sharding.Mesh | None = None):
    self.workdir = workdir
    self.config = reporting.read_config(workdir)
    self.label = run_label(workdir, self.config)
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    model, self._abstract = inference.abstract_model_variables(self.config, self.mesh)
    self._embed = jax.jit(models.make_embed_fn(model))
    self._source: Source | None = None  # read on first use: opening a dataset can be slow

  @property
  def steps(self) -> list[int]:
    return inference.checkpoint_steps(self.workdir)

  def resolve_step(self, step: int | None) -> int:
    steps = self.steps
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.workdir}: train first')
    return steps[-1] if step is None else int(step)

  def variables(self, step: int) -> Any:
    variables, _ = inference.restore_variables(self.workdir, self._abstract, step)
    return variables

  def embed(self, variables: Any, images: np.ndarray, *, flip: bool = False) -> np.ndarray:
    """Raw embeddings (N, D) float32; with `flip` the protocol's emb + emb_flip."""
    config = self.config
    images = resize_images(np.asarray(images), config.data.image_size)
    embeddings, _ = extract_embeddings(
      lambda batch: self._embed(variables, batch),
      images,
      batch_size=config.eval.batch_size,
      mean=config.data.mean,
      std=config.data.std,
      flip=flip,
      mesh=self.mesh,
    )
    return embeddings

  @property
  def source(self) -> Source:
    if self._source is None:
      from arcface_jax.data.sources import get_train_source

      self._source = get_train_source(self.config.data)
    return self._source

  @property
  def num_classes(self) -> int:
    return int(self.config.data.num_classes or self.source.num_classes)

  def class_centres(self, step: int) -> np.ndarray | None:
    return inference.read_class_centres(self.workdir, step, self.num_classes)

  def training_sample(self, max_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels) of at most `max_samples` training images, the same every call."""
    num = len(self.source)
    if num > max_samples:
      index = np.sort(np.random.default_rng(seed).choice(num, max_samples, replace=False))
    else:
      index = np.arange(num)
    samples = [self.source[int(i)] for i in index]
    images = resize_images(np.stack([s[0] for s in samples]), self.config.data.image_size)
    return images, np.array([s[1] for s in samples], np.int64)

  def verification_pairs(
    self, num_pairs: int | None = None
  ) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(set name, images (2N, ...), issame (N,)) of held-out pairs, or None when there are none.

    Digits runs pair held-out digits, synthetic runs held-out identities; other runs use the
    first verification set their config evaluates on.
    """
    config = self.config
    if config.data.source == 'digits':
      from arcface_jax.data.digits import digits_verification_pairs

      images, issame = digits_verification_pairs(
        num_pairs or 1000, config.data.image_size, num_classes=config.data.num_classes or 10
      )
      return 'digits_heldout', images, issame
    if config.data.source == 'synthetic':
      from arcface_jax.data.synthetic import synthetic_verification_pairs

      num = num_pairs or config.eval.synthetic_pairs or 1000
      images, issame = synthetic_verification_pairs(
        config.data.synthetic_variant, config.data.data_dir, num
      )
      return 'synthetic_heldout', images, issame
    if config.eval.bins:
      from arcface_jax.evaluation.verification_evaluator import load_sets

      name, images, issame = load_sets(config)[-1]
      if num_pairs:
        images, issame = images[: 2 * num_pairs], issame[:num_pairs]
      return name, images, issame
    return None
