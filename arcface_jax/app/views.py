"""What the page draws: the photo with boxes and names, the answer tables, the gallery's map.

Plain NumPy / Pillow / Matplotlib, no Gradio, so each picture is tested on its own.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from arcface_jax.faces import Gallery, Identification, Threshold

KNOWN_COLOUR = (46, 160, 67)
UNKNOWN_COLOUR = (214, 39, 40)
IDENTIFY_COLUMNS = ['face', 'name', 'score', 'runner-up', 'runner-up score', 'box [x1, y1, x2, y2]']
# Shown photos are scaled so the long side lies in this range: the 32-pixel crops of the
# embedded demo become readable, phone photos stay light to send.
MIN_SHOWN_SIDE, MAX_SHOWN_SIDE = 384, 1280


def shown_scale(height: int, width: int) -> float:
  """The factor a photo of this size is drawn at (integer when enlarging: crisp pixels)."""
  side = max(height, width)
  if side < MIN_SHOWN_SIDE:
    return float(math.ceil(MIN_SHOWN_SIDE / side))
  return min(1.0, MAX_SHOWN_SIDE / side)


def draw_identifications(photo: np.ndarray, answers: Sequence[Identification]) -> np.ndarray:
  """The photo (scaled by `shown_scale`) with each face's box and its name and score."""
  height, width = photo.shape[:2]
  scale = shown_scale(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  image = Image.fromarray(photo).resize(
    size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
  )
  draw = ImageDraw.Draw(image)
  font_size = max(12, round(max(size) / 28))
  font = ImageFont.load_default(size=font_size)
  line = max(2, round(max(size) / 200))
  for k, answer in enumerate(answers):
    x1, y1, x2, y2 = (float(v) * scale for v in answer.box)
    colour = UNKNOWN_COLOUR if answer.name == 'unknown' else KNOWN_COLOUR
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=line)
    label = f'{k}: {answer.name} {answer.score:.2f}'
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    text_w, text_h = right - left + 2 * line, bottom - top + 2 * line
    # The label sits above the box, or inside it when the box touches the top edge.
    tx = min(max(x1, 0), max(size[0] - text_w, 0))
    ty = y1 - text_h if y1 - text_h >= 0 else max(y1, 0)
    draw.rectangle([tx, ty, tx + text_w, ty + text_h], fill=colour)
    draw.text((tx + line - left, ty + line - top), label, fill=(255, 255, 255), font=font)
  return np.asarray(image)


def identify_rows(answers: Sequence[Identification]) -> list[list[object]]:
  """One row per face, in `IDENTIFY_COLUMNS` order."""
  return [
    [
      k,
      a.name,
      round(a.score, 4),
      a.runner_up or '',
      '' if a.runner_up_score is None else round(a.runner_up_score, 4),
      '[' + ', '.join(f'{float(v):.0f}' for v in a.box) + ']',
    ]
    for k, a in enumerate(answers)
  ]


def describe_threshold(threshold: Threshold) -> str:
  """One line for the page: the cosine used and what it means."""
  if threshold.kind == 'given':
    return f'threshold {threshold.value:.3f} (set on this page)'
  text = (
    f'threshold {threshold.value:.3f}, calibrated at {threshold.kind} {threshold.rate:g} '
    f'on {threshold.samples} scores of people the model never trained on'
  )
  return text + (f' ({threshold.note})' if threshold.note else '')


def embedding_map(gallery: Gallery) -> Figure:
  """Every enrolled photo's embedding projected on the gallery's two principal axes."""
  embeddings = np.asarray(gallery.embeddings, np.float64)
  centred = embeddings - embeddings.mean(axis=0)
  if len(embeddings) > 1:
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes[:2].T
    variance = singular**2
    explained = variance[:2].sum() / max(variance.sum(), 1e-12)
  else:
    points, explained = np.zeros((len(embeddings), 2)), 1.0
  if points.shape[1] < 2:  # one principal direction only (two photos): flat second axis
    points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
  figure = Figure(figsize=(6.4, 4.8), dpi=100, layout='constrained')
  axis = figure.subplots()
  cmap = _colours(len(gallery.names))
  for index, name in enumerate(gallery.names):
    mine = points[gallery.labels == index]
    if not len(mine):
      continue
    axis.scatter(mine[:, 0], mine[:, 1], s=36, color=cmap[index], label=name, alpha=0.85)
    centre = mine.mean(axis=0)
    axis.annotate(
      name, centre, textcoords='offset points', xytext=(4, 4), fontsize=9, color=cmap[index]
    )
  axis.set_xlabel('principal axis 1')
  axis.set_ylabel('principal axis 2')
  axis.set_title(
    f'{len(gallery.names)} people, {len(embeddings)} photos: PCA of the '
    f'embeddings ({100 * explained:.0f}% of the variance)',
    fontsize=10,
  )
  axis.grid(alpha=0.3)
  return figure


def _colours(count: int) -> list[tuple[float, float, float, float]]:
  from matplotlib import colormaps

  palette = colormaps['tab10' if count <= 10 else 'tab20']
  return [palette(i % palette.N) for i in range(count)]
