"""The evaluator registry (name → evaluator) the trainer and `python -m arcface_jax.evaluate` use.

Every evaluator has one interface, `run(embedder, step) -> {metric: float}`, where `embedder` is an
`arcface_jax.inference.Embedder` (a restored checkpoint, or the live training variables wrapped by
`inference.embedder_from_variables`). After a run, `details` holds the evaluator's full results,
the section `eval/step_<N>.json` stores under the evaluator's name. The config picks them by name:

  config.eval.evaluators = ('verification', 'ijb', 'identification')

and each reads its own options: `verification` the keys it had before the registry
(`config.eval.bins`, `bin_dir`, `synthetic_pairs`, `val_pairs`, `nfolds`), `ijb` `config.eval.ijb`
(`dir`, `target`), `identification` `config.eval.identification` (`gallery`, `probe`); `test`
(closed-set top-1 on the run's test split) has none. All use `config.eval.batch_size`.

Verification logs each set in the reference format `[lfw][step] Accuracy-Flip: 0.99817+-0.00229`
and, given `keep_best_in=workdir` (the trainer does), keeps the backbone variables of the best step
per set under `workdir/best/<set>/` with the scores in `workdir/best.json`.

This module is the entry point: importing it registers every kind. The machinery (`register`,
`get`, `for_training`, `embed_function`) lives in `registry`, each evaluator in a module of its
own (`verification_evaluator`, `ijb_evaluator`, `identification_evaluator`,
`closed_set_evaluator`); all of them are importable from here as before.
"""

from __future__ import annotations

# Importing each kind registers it.
from arcface_jax.evaluation.closed_set_evaluator import ClosedSetEvaluator
from arcface_jax.evaluation.identification_evaluator import IdentificationEvaluator
from arcface_jax.evaluation.ijb_evaluator import IJBEvaluator
from arcface_jax.evaluation.registry import (
  DEFAULT_EVALUATORS,
  Evaluator,
  configured_names,
  embed_function,
  for_training,
  get,
  names,
  register,
)
from arcface_jax.evaluation.verification_evaluator import (
  SYNTHETIC_SET,
  VAL_SET,
  VerificationEvaluator,
  load_bins,
  load_sets,
  resolve_bin,
)

__all__ = [
  'DEFAULT_EVALUATORS',
  'SYNTHETIC_SET',
  'VAL_SET',
  'ClosedSetEvaluator',
  'Evaluator',
  'IJBEvaluator',
  'IdentificationEvaluator',
  'VerificationEvaluator',
  'configured_names',
  'embed_function',
  'for_training',
  'get',
  'load_bins',
  'load_sets',
  'names',
  'register',
  'resolve_bin',
]
