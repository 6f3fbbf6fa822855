"""Closed-set test accuracy: top-1 of the trained classifier head and of the nearest class centre.

A run trained on a folder tree split by image (`data.split_by=image`, `data.test_fraction > 0`)
keeps some photos of every training identity aside; the same people, new photos. Two top-1
accuracies are measured on those photos, both over the training label space:

* classifier head: the class whose learnt centre w_c (the margin head's weight row) the test
  embedding x is most aligned with, argmax_c cos(x, w_c) — the head's logits without margin (the
  scale s and, for A-softmax, the feature norm do not change the argmax). For loss.name=softmax
  the head is an unnormalised FC layer with a bias, so argmax_c (x·w_c + b_c). A triplet run has
  no head and reports only the second figure.
* nearest class centre: each training class's mean of L2-normalised embeddings of its training
  photos (the training split, embedded now with the evaluated backbone), argmax cosine. This needs
  no head, so it measures the embedding itself as the gallery-based `identify` would use it.

Both use each image's plain embedding (no flip-sum): the head was trained on single views.
The centres are read from the checkpoint's `train` item on their own, as host arrays, whatever
their sharding was (`head.model_parallel` splits them by class over devices, padded with zero
rows past the real classes, which are dropped).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from arcface_jax import paths
from arcface_jax.checkpoint_reading import MODEL_ITEM, TRAIN_ITEM, checkpoint_dir


class NoTestSplitError(ValueError):
  """The run has no closed-set test split; the message says which config keys make one."""


def require_test_split(config: ml_collections.ConfigDict) -> None:
  """NoTestSplitError unless `config` trains on a folder split by image with test_fraction > 0."""
  data = config.data
  if data.source == 'folder' and data.split_by == 'image' and data.test_fraction > 0:
    return
  raise NoTestSplitError(
    f'--test needs a closed-set test split, which this run does not have (config.data.source='
    f'{data.source!r}, split_by={data.split_by!r}, test_fraction={data.test_fraction}). Train '
    'on a folder tree with --config.data.source=folder --config.data.split_by=image '
    '--config.data.test_fraction=0.1 (photos of every identity held out; split_by=identity holds '
    'out whole people, whom the head has no class for)'
  )


def restore_head(workdir: paths.PathLike, step: int) -> dict[str, np.ndarray]:
  """The head parameters of checkpoint `step` ({'weight': (C_stored, D)}, plus 'bias' for softmax)
  as host numpy arrays, read alone from the `train` item (no optimizer state)."""
  manager = ocp.CheckpointManager(
    checkpoint_dir(workdir),
    item_names=(MODEL_ITEM, TRAIN_ITEM),
    item_handlers={
      MODEL_ITEM: ocp.StandardCheckpointHandler(),
      TRAIN_ITEM: ocp.PyTreeCheckpointHandler(),
    },
  )
  try:
    metadata = manager.item_metadata(step)[TRAIN_ITEM]
    tree = getattr(metadata, 'tree', metadata)
    target = {'head': jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree['head'])}
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        **{
          TRAIN_ITEM: ocp.args.PyTreeRestore(
            item=target, restore_args=as_numpy, partial_restore=True
          )
        }
      ),
    )
  finally:
    manager.close()
  return {k: np.asarray(v) for k, v in restored[TRAIN_ITEM]['head'].items()}


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def head_predictions(
  embeddings: np.ndarray, head: dict[str, np.ndarray], *, loss_name: str, num_classes: int
) -> np.ndarray:
  """argmax over the first `num_classes` centres: cos θ for margin heads, x·w + b for softmax."""
  weight = np.asarray(head['weight'], np.float64)[:num_classes]
  if loss_name == 'softmax':
    logits = np.asarray(embeddings, np.float64) @ weight.T + np.asarray(head['bias'])[:num_classes]
  else:
    logits = _unit(embeddings) @ _unit(weight).T
  return np.argmax(logits, axis=1)


def class_mean_predictions(
  embeddings: np.ndarray, train_embeddings: np.ndarray, train_labels: np.ndarray, num_classes: int
) -> np.ndarray:
  """argmax cosine to each class's mean unit training embedding (classes without one: never)."""
  unit = _unit(train_embeddings)
  sums = np.zeros((num_classes, unit.shape[1]))
  np.add.at(sums, np.asarray(train_labels), unit)
  present = np.bincount(train_labels, minlength=num_classes)[:num_classes] > 0
  scores = _unit(embeddings) @ _unit(sums).T
  scores[:, ~present] = -np.inf
  return np.argmax(scores, axis=1)


def _read_split(source: Any, image_size: int, what: str) -> tuple[np.ndarray, np.ndarray, list]:
  """(images uint8 (N, S, S, 3), labels (N,), unreadable paths) of a folder split, with progress."""
  from tqdm import tqdm

  from arcface_jax.data.decode import resize
  from arcface_jax.data.errors import CorruptSampleError

  images, labels, bad = [], [], []
  for index in tqdm(
    range(len(source)), desc=f'reading {what} photos', unit='photo', disable=len(source) < 500
  ):
    try:
      image, label = source[index]
    except CorruptSampleError as e:
      bad.append(str(e.key))
      continue
    images.append(resize(image, (image_size, image_size)))
    labels.append(label)
  return np.stack(images), np.asarray(labels, np.int64), bad


def evaluate_test_split(
  embed: Callable[[np.ndarray], np.ndarray],
  config: ml_collections.ConfigDict,
  workdir: paths.PathLike,
  step: int,
) -> dict[str, Any]:
  """Both top-1 accuracies on the run's test split; `embed` maps uint8 images to (N, D), one view.

  Returns {'head_top1' (absent for triplet), 'nearest_centre_top1', 'images', 'classes',
  'unreadable'}.
  """
  from arcface_jax.data import sources

  require_test_split(config)
  test = sources.get_source(config.data, 'test')
  train = sources.get_source(config.data, 'train')
  num_classes = config.data.num_classes or train.num_classes
  size = config.data.image_size
  test_images, test_labels, bad_test = _read_split(test, size, 'test')
  train_images, train_labels, bad_train = _read_split(train, size, 'training')
  test_embeddings = embed(test_images)
  train_embeddings = embed(train_images)
  results: dict[str, Any] = {
    'images': int(len(test_labels)),
    'classes': int(num_classes),
    'unreadable': len(bad_test) + len(bad_train),
  }
  if bad_test or bad_train:
    logging.warning(
      '--test: skipped %d unreadable photos, e.g. %s',
      results['unreadable'],
      (bad_test + bad_train)[:5],
    )
  if config.loss.name != 'triplet':
    head = restore_head(workdir, step)
    predicted = head_predictions(
      test_embeddings, head, loss_name=config.loss.name, num_classes=num_classes
    )
    results['head_top1'] = float(np.mean(predicted == test_labels))
  nearest = class_mean_predictions(test_embeddings, train_embeddings, train_labels, num_classes)
  results['nearest_centre_top1'] = float(np.mean(nearest == test_labels))
  return results
