"""The command-line entry points: their listing (`python -m arcface_jax`) and the argparse parser
each builds its `--help` with (the module docstring: what it does, then example invocations).

Every command parses its arguments with argparse (absl's `argparse_flags` flavour, which also
takes absl's logging flags such as --verbosity); configs come from recipe files plus
`--config.KEY=VALUE` overrides (arcface_jax.config_files). A new command adds a line here; a test
fails on an entry point missing from the listing or a `--help` without an example.
"""

from __future__ import annotations

import argparse

from absl.flags import argparse_flags

# invocation → what it does, in one line. Grouped as `python -m arcface_jax` prints them.
COMMANDS: dict[str, dict[str, str]] = {
  'train and evaluate': {
    'python -m arcface_jax.train': 'train a model from a recipe file (configs/*.py), resuming its workdir',
    'python -m arcface_jax.evaluate': "evaluate a run's checkpoint: verification, IJB-B/C, identification",
    'python -m arcface_jax.search': 'grid search over config values, one training run per cell',
    'python -m arcface_jax.demo': 'train on the embedded synthetic identities and evaluate on held-out ones',
    'python -m arcface_jax.subcenter_clean': 'sub-center ArcFace cleaning: list the outlier images of a K > 1 run',
    'python -m arcface_jax.export': 'export a backbone as StableHLO or ONNX',
    'python -m arcface_jax.models.import_onnx': "import the reference trainer's ONNX IResNet / MobileFaceNet as Flax variables",
    'python -m arcface_jax.recipes_table': "write the published recipes' table (configs/recipes.py) as "
    'Markdown',
  },
  'use a model on photos': {
    'python -m arcface_jax.faces': 'detect, align, enroll, identify and verify faces in photos',
    'python -m arcface_jax.app': 'the demo page (Gradio) over arcface_jax.faces',
  },
  'data': {
    'python -m arcface_jax.data.align': 'align photos onto the 112x112 template with their 5 landmarks',
    'python -m arcface_jax.data.pack': 'pack an identity folder into RecordIO (train.rec/train.idx)',
    'python -m arcface_jax.data.tfds_builders': 'build a TFDS array_record dataset from RecordIO or a folder',
    'python -m arcface_jax.data.verification_bin': 'make or describe a verification .bin set',
  },
  'figures and analysis': {
    'python -m analysis.logit_curves': 'target logit against θ for every margin (paper Fig. 4b) and its gradient',
    'python -m analysis.margin_families': 'families of target-logit curves and boundaries of margins that move',
    'python -m analysis.decision_margins': 'binary decision boundaries of every loss in the (θ1, θ2) plane',
    'python -m analysis.angles': 'angle distributions of a run at several checkpoints',
    'python -m analysis.embeddings': 'features of trained runs on the circle or sphere, coloured by class',
    'python -m analysis.compare': 'training curves and verification accuracy of several runs',
    'python -m analysis.loss_table': 'every loss trained with one recipe, and the comparison table',
    'python -m analysis.report': 'one HTML page with the figures of given runs and their configs',
    'python -m analysis.toy_figures': '`make figures`: the digits toy trained once per loss, and its report',
  },
  'benchmarks (results in docs/benchmarks.md)': {
    'python benchmarks/backbone.py': 'backbone train-step throughput: JAX against the same network in PyTorch',
    'python benchmarks/conv_formulations.py': "XLA's convolutions against the CPU formulations, one operation at a time",
    'python benchmarks/evaluation.py': 'verification protocol and embedding extraction speed',
    'python benchmarks/faces.py': 'detect + align + embed photos per second',
    'python benchmarks/finetune.py': 'frozen-backbone fine-tuning against full training: steps/s, memory',
    'python benchmarks/head.py': 'margin softmax head forward + backward: JAX against PyTorch',
    'python benchmarks/input_pipeline.py': 'input pipeline images/s: read, decode, flip, normalise, batch',
    'python benchmarks/run_all.py': 'every benchmark at its quick setting (make bench); rewrites the summary table',
    'python benchmarks/partial_fc.py': 'Partial FC r=0.1 against the full softmax: time and memory',
    'python benchmarks/recipe_memory.py': "a recipe's train-step memory (XLA's analysis) and time on this machine",
    'python benchmarks/train_step.py': "train-step throughput and the loop's overhead over the bare step",
  },
}


def listing() -> str:
  """The text `python -m arcface_jax` prints: every command, one line each, by group."""
  lines = ['arcface_jax commands (each takes --help, which shows an example):', '']
  width = max(len(command) for group in COMMANDS.values() for command in group)
  for group, commands in COMMANDS.items():
    lines.append(f'{group}:')
    lines.extend(f'  {command:<{width}}  {what}' for command, what in commands.items())
    lines.append('')
  return '\n'.join(lines)


def parser(module: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
  """An ArgumentParser whose --help prints the module docstring as written (its examples too)."""
  return argparse_flags.ArgumentParser(
    prog=f'python -m {module}',
    description=doc,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    **kwargs,
  )
