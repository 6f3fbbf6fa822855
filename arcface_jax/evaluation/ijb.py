"""IJB-B / IJB-C 1:1 verification: template pooling, TAR at FAR 1e-6 ... 1e-1, ROC, saved scores.

Protocol (REFERENCE §4): every image is aligned to 112x112 by its 5 landmarks and embedded with
its horizontal flip (emb + emb_flip, kept un-normalised so a confident face weighs more, and
optionally multiplied by the detector score); within a template the images of each media (one
video or one still) are averaged, the media are summed, and the result is L2-normalised; the score
of a template pair is the cosine of their features.

TAR@FAR here is the true-accept rate at the most permissive threshold whose false-accept rate does
not exceed the target (a pair is accepted when its score is strictly above the threshold). The
reference script instead reads the ROC point whose FAR is nearest the target, which can lie just
above it; on IJB-C's 15.6M impostor pairs the two differ by at most one false accept's worth.

Layout read (IJB-C shown; IJB-B is the same with `ijbb_`):
  <root>/meta/ijbc_face_tid_mid.txt         image template_id media_id
  <root>/meta/ijbc_template_pair_label.txt  template_1 template_2 label
  <root>/meta/ijbc_name_5pts_score.txt      image x1 y1 ... x5 y5 detector_score
  <root>/loose_crop/<image>

The metric functions (`template_features`, `pair_scores`, `threshold_at_far`, `tar_at_far`,
`roc_curve`) are pure NumPy; `read_ijb` and `evaluate_ijb` do the file work.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from etils import epath

from arcface_jax import paths as uri_paths
from arcface_jax.data.errors import DatasetError

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# ------------------------------------------------------------------------------ metrics


def template_features(
  embeddings: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """(template ids (T,) sorted, L2-normalised features (T, D)): media-mean, then sum over media."""
  embeddings = np.asarray(embeddings, np.float64)
  templates, medias = np.asarray(templates), np.asarray(medias)
  if not len(embeddings) == len(templates) == len(medias):
    raise ValueError(
      f'{len(embeddings)} embeddings, {len(templates)} template ids and '
      f'{len(medias)} media ids must match'
    )
  template_ids, template_index = np.unique(templates, return_inverse=True)
  # One group per (template, media): the same media id in two templates is two groups.
  _, group, group_size = np.unique(
    np.stack([template_index, np.unique(medias, return_inverse=True)[1]], 1),
    axis=0,
    return_inverse=True,
    return_counts=True,
  )
  group = group.reshape(-1)
  weight = 1.0 / group_size[group]  # each image's share of its media's mean
  pooled = np.zeros((len(template_ids), embeddings.shape[1]))
  np.add.at(pooled, template_index, embeddings * weight[:, None])
  norms = np.linalg.norm(pooled, axis=1, keepdims=True)
  return template_ids, pooled / np.maximum(norms, 1e-12)


def pair_scores(
  template_ids: np.ndarray,
  features: np.ndarray,
  first: np.ndarray,
  second: np.ndarray,
  chunk: int = 1 << 20,
) -> np.ndarray:
  """Cosine of each listed template pair (features already L2-normalised), float32 (P,)."""
  first, second = np.asarray(first), np.asarray(second)
  index = []
  for listed in (first, second):
    position = np.clip(np.searchsorted(template_ids, listed), 0, len(template_ids) - 1)
    missing = template_ids[position] != listed
    if missing.any():
      raise DatasetError(f'template {listed[missing][0]} is in the pair list but has no images')
    index.append(position)
  features = np.asarray(features, np.float32)
  scores = np.empty(len(first), np.float32)
  for start in range(0, len(first), chunk):  # 15.6M IJB-C pairs: bounded memory
    a = features[index[0][start : start + chunk]]
    b = features[index[1][start : start + chunk]]
    scores[start : start + chunk] = np.einsum('ij,ij->i', a, b)
  return scores


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
  """The lowest threshold t with #(impostor > t) <= floor(far * #impostors); -inf if none needed.

  Accepting scores strictly above t then gives a false-accept rate of at most `far`.
  """
  impostor = np.sort(np.asarray(impostor_scores, np.float64))[::-1]
  if len(impostor) == 0:
    raise ValueError('no impostor scores: FAR is undefined')
  allowed = int(np.floor(far * len(impostor) + 1e-9))  # guard 1e-3 * 1000 = 0.999...
  return float(impostor[allowed]) if allowed < len(impostor) else -np.inf


def tar_at_far(
  scores: np.ndarray, labels: np.ndarray, fars: Sequence[float] = FARS
) -> dict[float, float]:
  """{far: true-accept rate at threshold_at_far} for scores of genuine (1) / impostor (0) pairs."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  genuine = scores[labels]
  if len(genuine) == 0:
    raise ValueError('no genuine pairs: TAR is undefined')
  return {float(f): float(np.mean(genuine > threshold_at_far(scores[~labels], f))) for f in fars}


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(far, tar) at every distinct score, from the strictest threshold to accepting everything."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  order = np.argsort(-scores, kind='stable')
  sorted_scores, sorted_labels = scores[order], labels[order]
  true_accepts = np.cumsum(sorted_labels)
  false_accepts = np.cumsum(~sorted_labels)
  # Only the last position of a run of equal scores is a reachable operating point.
  last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
  far = false_accepts[last] / max(int((~labels).sum()), 1)
  tar = true_accepts[last] / max(int(labels.sum()), 1)
  return np.r_[0.0, far], np.r_[0.0, tar]


# ------------------------------------------------------------------------------ files


@dataclasses.dataclass
class IJBSet:
  images: list[str]  # paths under loose_crop/
  landmarks: np.ndarray  # (M, 5, 2) float32, (x, y) in the loose crop
  detector_scores: np.ndarray  # (M,)
  templates: np.ndarray  # (M,) template id of each image
  medias: np.ndarray  # (M,) media id of each image
  pairs: np.ndarray  # (P, 2) template ids
  labels: np.ndarray  # (P,) 1 genuine, 0 impostor


def _read_columns(path: str, columns: int) -> list[list[str]]:
  if not uri_paths.is_file(path):
    raise FileNotFoundError(f'IJB file {path} does not exist')
  rows = [line.split() for line in uri_paths.read_text(path).splitlines() if line.strip()]
  bad = next((n for n, row in enumerate(rows, 1) if len(row) != columns), None)
  if bad is not None:
    raise DatasetError(f'{path}:{bad}: expected {columns} columns, got {len(rows[bad - 1])}')
  return rows


def read_ijb(root: uri_paths.PathLike, target: str = 'IJBC') -> IJBSet:
  """Reads the standard IJB-B/C 1:1 layout under `root`, local or gs:// (see the module
  docstring)."""
  prefix = {'IJBB': 'ijbb', 'IJBC': 'ijbc'}.get(target.upper())
  if prefix is None:
    raise ValueError(f'ijb target must be IJBB or IJBC, got {target!r}')
  meta = uri_paths.join(root, 'meta')
  faces = _read_columns(uri_paths.join(meta, f'{prefix}_face_tid_mid.txt'), 3)
  landmark_rows = _read_columns(uri_paths.join(meta, f'{prefix}_name_5pts_score.txt'), 12)
  pairs = np.array(
    _read_columns(uri_paths.join(meta, f'{prefix}_template_pair_label.txt'), 3), np.int64
  ).reshape(-1, 3)
  by_name = {row[0]: row for row in landmark_rows}
  missing = next((row[0] for row in faces if row[0] not in by_name), None)
  if missing is not None:
    raise DatasetError(f'{meta}: image {missing} has a template but no landmarks')
  points = np.array([by_name[row[0]][1:] for row in faces], np.float32).reshape(-1, 11)
  return IJBSet(
    images=[uri_paths.join(root, 'loose_crop', row[0]) for row in faces],
    landmarks=points[:, :10].reshape(-1, 5, 2),
    detector_scores=points[:, 10],
    templates=np.array([int(row[1]) for row in faces], np.int64),
    medias=np.array([int(row[2]) for row in faces], np.int64),
    pairs=pairs[:, :2],
    labels=pairs[:, 2],
  )


def load_aligned(paths: Sequence[str], landmarks: np.ndarray, size: int = 112) -> np.ndarray:
  """RGB uint8 (M, size, size, 3): each image read and aligned by its 5 landmarks."""
  import cv2

  from arcface_jax.data.align import align_face  # written alongside; imported when first needed

  def read(path: str) -> np.ndarray | None:
    if not uri_paths.is_remote(path):
      return cv2.imread(path, cv2.IMREAD_COLOR)
    try:
      data = np.frombuffer(uri_paths.read_bytes(path), np.uint8)
    except FileNotFoundError:
      return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None

  def one(index: int) -> np.ndarray:
    bgr = read(paths[index])
    if bgr is None:
      raise DatasetError(f'{paths[index]} is missing or cannot be decoded')
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # align in RGB, the order the models expect
    return align_face(rgb, landmarks[index], size=size)

  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    aligned = list(pool.map(one, range(len(paths))))
  return np.stack(aligned).astype(np.uint8) if aligned else np.zeros((0, size, size, 3), np.uint8)


def evaluate_ijb(
  embed: Callable[[np.ndarray], np.ndarray],
  root: uri_paths.PathLike,
  target: str = 'IJBC',
  *,
  out_dir: str | os.PathLike | None = None,
  image_size: int = 112,
  use_detector_score: bool = True,
  chunk: int = 8192,
  fars: Sequence[float] = FARS,
  label: str = '',
) -> dict[str, Any]:
  """The 1:1 protocol end to end; `embed` maps aligned uint8 images to emb + emb_flip (M, D).

  Images are read, aligned and embedded `chunk` at a time (IJB-C's 469k aligned faces would take
  17 GB at once). With `out_dir`: <target>_scores.npy, <target>_labels.npy, <target>_tar_at_far.json
  and <target>_roc.png are written there.
  """
  data = read_ijb(root, target)
  parts = []
  for start in range(0, len(data.images), chunk):
    images = load_aligned(
      data.images[start : start + chunk], data.landmarks[start : start + chunk], image_size
    )
    parts.append(np.asarray(embed(images), np.float32))
  embeddings = np.concatenate(parts)
  if use_detector_score:
    embeddings = embeddings * data.detector_scores[:, None]
  template_ids, features = template_features(embeddings, data.templates, data.medias)
  scores = pair_scores(template_ids, features, data.pairs[:, 0], data.pairs[:, 1])
  table = tar_at_far(scores, data.labels, fars)
  result = {
    'target': target.upper(),
    'tar_at_far': table,
    'num_pairs': int(len(scores)),
    'num_templates': int(len(template_ids)),
    'num_images': int(len(embeddings)),
  }
  if out_dir is not None:  # local or gs:// (a workdir's eval/), through etils.epath
    out_path = epath.Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    name = target.upper()
    with (out_path / f'{name}_scores.npy').open('wb') as f:
      np.save(f, scores)
    with (out_path / f'{name}_labels.npy').open('wb') as f:
      np.save(f, data.labels)
    (out_path / f'{name}_tar_at_far.json').write_text(
      json.dumps({f'{k:g}': v for k, v in table.items()}, indent=2)
    )
    plot_roc(
      scores, data.labels, out_path / f'{name}_roc.png', title=f'{name} 1:1', label=label or name
    )
  return result


def format_table(table: dict[float, float], name: str) -> str:
  """The TAR@FAR table as two text rows, in percent like the published tables."""
  header = ' | '.join(f'{far:>7.0e}' for far in table)
  values = ' | '.join(f'{100 * tar:7.2f}' for tar in table.values())
  return f'{name:>10} | {header}\n{"TAR (%)":>10} | {values}'


def plot_roc(
  scores: np.ndarray,
  labels: np.ndarray,
  path: str | os.PathLike,
  *,
  title: str = '',
  label: str = '',
) -> None:
  """ROC on a log FAR axis from 1e-6 to 1, saved as an image (matplotlib, Agg)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  far, tar = roc_curve(scores, labels)
  keep = far > 0
  figure, axis = plt.subplots(figsize=(5, 4))
  axis.plot(far[keep], tar[keep], label=label or None)
  axis.set(
    xscale='log',
    xlim=(1e-6, 1),
    ylim=(0, 1),
    xlabel='False accept rate',
    ylabel='True accept rate',
    title=title,
  )
  axis.grid(True, which='both', alpha=0.3)
  if label:
    axis.legend(loc='lower right')
  figure.tight_layout()
  png = io.BytesIO()  # drawn in memory, written in one piece (local or gs://)
  figure.savefig(png, format='png', dpi=120)
  epath.Path(path).write_bytes(png.getvalue())
  plt.close(figure)
