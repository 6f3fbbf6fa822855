"""The margins every loss figure draws: the paper's comparison plus anything else registered.

Each entry is built with `arcface_jax.margins.get`, so a figure shows exactly the curve a run
with that loss trains on. Names registered later in `margins.names()` are added with their
defaults, so a new margin appears in every figure without touching this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from arcface_jax import margins


@dataclasses.dataclass(frozen=True)
class MarginSpec:
  key: str  # column / file name
  label: str  # legend entry
  name: str  # margins.get name
  params: dict[str, Any]
  note: str = ''

  def build(self) -> Any:
    return margins.get(self.name, **self.params)


# The paper's comparison (Fig. 4b and its tables). Plain softmax is a head option, not a margin:
# its target logit is ||W|| ||x|| cos θ with neither norm fixed, so per unit norms it is cos θ, the
# same curve as NormSoftmax, drawn from norm_softmax's target_logit and labelled as such.
PAPER_SPECS = (
  MarginSpec(
    'softmax',
    'Softmax (cos θ per unit ‖W‖‖x‖)',
    'norm_softmax',
    {},
    note='unnormalised; drawn per unit norms',
  ),
  MarginSpec('norm_softmax', 'NormSoftmax', 'norm_softmax', {}),
  MarginSpec(
    'sphereface',
    'SphereFace (A-softmax m=4)',
    'sphereface',
    {},
    note='psi(theta) with the softmax blend lambda = 0',
  ),
  MarginSpec('sphereface_1.35', 'SphereFace (m1=1.35)', 'combined', dict(m1=1.35, m2=0.0, m3=0.0)),
  MarginSpec('cosface', 'CosFace (m=0.35)', 'cosface', {}),
  MarginSpec('arcface', 'ArcFace (m=0.5)', 'arcface', {}),
  MarginSpec('cm1', 'CM1 (1, 0.3, 0.2)', 'combined', dict(m1=1.0, m2=0.3, m3=0.2)),
  MarginSpec('cm2', 'CM2 (0.9, 0.4, 0.15)', 'combined', dict(m1=0.9, m2=0.4, m3=0.15)),
)


def all_specs() -> list[MarginSpec]:
  """PAPER_SPECS plus every registered margin name they do not already cover."""
  specs = list(PAPER_SPECS)
  covered = {s.name for s in specs}
  for name in margins.names():
    if name not in covered:
      specs.append(MarginSpec(name, name, name, {}, note='registered margin, default parameters'))
  return specs


def describe(mg: Any) -> dict[str, Any]:
  """The parameters a margin object carries (its dataclass fields), for the JSON files."""
  if dataclasses.is_dataclass(mg):
    return {f.name: getattr(mg, f.name) for f in dataclasses.fields(mg)}
  return {'repr': repr(mg)}
