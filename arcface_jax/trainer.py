"""`train_and_evaluate(config, workdir)`: the training loop every entry point and test calls.

One jitted step with donated state, the global batch sharded over the mesh's `data` axis (uint8
images, normalised in the step, sent to the devices a batch ahead), periodic asynchronous
checkpoints, resume from the latest checkpoint of the workdir at the same data position, a clean
save-and-exit on SIGTERM/SIGINT (at once while the step is still compiling), and verification
during training. Nothing in the loop waits for the device except the reports every
`config.train.log_every` steps and the checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from arcface_jax import (
  compiler_options,
  config_checks,
  freezing,
  init_from,
  losses,
  models,
  optim,
  parallel,
  paths,
  reporting,
  seeding,
  workdir_lock,
  write_errors,
)
from arcface_jax.background_compile import BackgroundCompile
from arcface_jax.checkpointing import Checkpointer, kept_message
from arcface_jax.data import pipeline, sources
from arcface_jax.divergence import DivergenceCheck, TrainingDivergedError  # noqa: F401  (API)
from arcface_jax.evaluation import evaluators
from arcface_jax.inference import embedder_from_variables
from arcface_jax.preemption import PreemptionFlag
from arcface_jax.train_state import TrainState, create_train_state
from arcface_jax.train_step import make_train_step

MODEL_DTYPES = ('float32', 'bfloat16')


ConfigError = config_checks.ConfigError  # callers catch trainer.ConfigError


def validate_config(
  config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1
) -> None:
  """Checks the values that would otherwise fail deep inside XLA or hours into a run."""
  batch = config.train.batch_size
  if batch <= 0 or batch % num_devices:
    fit = max(num_devices, batch - batch % num_devices)
    raise ConfigError(
      f'config.train.batch_size={batch} must be a positive multiple of the {num_devices} '
      f'devices in the mesh (the global batch is split evenly); try '
      f'--config.train.batch_size={fit}'
    )
  if batch % process_count:
    raise ConfigError(
      f'config.train.batch_size={batch} must divide evenly over the {process_count} processes'
    )
  if config.model.dtype not in MODEL_DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r}: expected one of {MODEL_DTYPES}')
  if config.train.schedule not in optim.SCHEDULES:
    raise ConfigError(
      f'config.train.schedule={config.train.schedule!r}: expected one of {optim.SCHEDULES}'
    )
  if config.train.num_steps <= 0:
    raise ConfigError(f'config.train.num_steps={config.train.num_steps} must be positive')
  if config.model.name not in models.names():
    raise ConfigError(f'config.model.name={config.model.name!r}: expected one of {models.names()}')
  if config.train.keep_checkpoints < 1:
    raise ConfigError(
      f'config.train.keep_checkpoints={config.train.keep_checkpoints} must be at '
      'least 1 (the newest checkpoints kept; with none a run could not resume); '
      'try --config.train.keep_checkpoints=3'
    )
  config_checks.check_config(config)


def prepare_workdir(workdir: paths.PathLike) -> None:
  """Creates the workdir (local or gs://) and proves it is writable before any compute is spent."""
  try:
    directory = paths.resolve(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f'.write_probe_{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except ImportError as e:  # no filesystem package for the URI's scheme (gcsfs for gs://)
    raise ConfigError(
      f'workdir {str(workdir)!r} cannot be reached ({e}); a gs:// workdir needs '
      "`pip install 'arcface_jax[gcs]'`"
    ) from None
  except OSError as e:
    raise ConfigError(
      f'workdir {str(workdir)!r} is not writable ({e.strerror or e}); pass a '
      '--workdir you can write to'
    ) from None


def _with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: paths.PathLike,
  *,
  mesh: jax.sharding.Mesh | None = None,
  step_callback: Callable[[int], None] | None = None,
) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the state."""
  reporting.quiet_library_logs()
  mesh = parallel.make_mesh() if mesh is None else mesh
  validate_config(config, num_devices=mesh.size, process_count=jax.process_count())
  prepare_workdir(workdir)
  # One training process per workdir; `run_scope` holds what `_train` sets up until it ends.
  with workdir_lock.hold(workdir), contextlib.ExitStack() as run_scope:
    try:
      return _train(config, workdir, mesh, step_callback, run_scope)
    except write_errors.WorkdirWriteError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # a failed write, wherever it surfaced
      if not write_errors.is_out_of_space(e):
        raise
      raise write_errors.describe(e, f'into {workdir}', kept=kept_message(workdir)) from None


def _train(
  config: ml_collections.ConfigDict,
  workdir: paths.PathLike,
  mesh: jax.sharding.Mesh,
  step_callback: Callable[[int], None] | None,
  run_scope: contextlib.ExitStack,
) -> TrainState:
  reporting.write_config(workdir, config)
  keys = seeding.keys(config)  # the run's one root key, split by purpose

  source = sources.get_train_source(config.data)
  config_checks.check_dataset(config, source)
  num_classes = config.data.num_classes or source.num_classes
  per_identity = config.data.images_per_identity
  loader = pipeline.TrainLoader(
    source,
    global_batch_size=config.train.batch_size,
    seed=seeding.integer_seed(keys['data']),
    image_size=config.data.image_size,
    flip=config.data.flip,
    rotation_degrees=config.data.rotation_degrees,
    color_jitter=config.data.color_jitter,
    low_resolution_prob=config.data.low_resolution_prob,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_workers=config.data.num_workers,
    prefetch=config.data.prefetch,
    cache_bytes=int(config.data.cache_mib * 2**20),
    images_per_identity=per_identity,
    labels=sources.source_labels(source) if per_identity else None,
  )
  logging.info(
    'data: %d images, %d classes, %d steps per epoch%s',
    len(source),
    num_classes,
    loader.steps_per_epoch,
    f', batches of {config.train.batch_size // per_identity} identities × {per_identity} images'
    if per_identity
    else '',
  )

  model = models.from_config(config)
  try:  # centres split over the mesh (config.head.model_parallel) or on every device
    objective = losses.from_config(config, num_classes=num_classes, mesh=mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:  # freeze / lr_multipliers expressions are checked against the parameters here
    tx, schedule = optim.from_config(config)
    init_fn = functools.partial(
      create_train_state, model=model, objective=objective, tx=tx, image_size=config.data.image_size
    )
    abstract_state = jax.eval_shape(init_fn, keys)
  except optim.PatternError as e:
    raise ConfigError(str(e)) from None
  if config.head.model_parallel:
    # Class centres and their optimizer leaves split by class over `data`; the rest replicated.
    state_shardings = parallel.state_shardings(abstract_state, mesh)
  else:
    state_shardings = jax.tree.map(lambda _: parallel.replicated(mesh), abstract_state)
  checkpointer = Checkpointer(
    workdir, save_every=config.train.checkpoint_every, keep=config.train.keep_checkpoints
  )
  restored = checkpointer.restore_latest(_with_shardings(abstract_state, state_shardings))
  if restored is not None:
    logging.info('resumed from %s at step %d', workdir, int(restored.step))
    if config.model.init_from:
      logging.info(
        'config.model.init_from=%r ignored: it applies only at the start of a run, '
        'and this one resumes from its own checkpoint',
        config.model.init_from,
      )
    state = restored.replace(opt_state=optim.set_hyperparams(restored.opt_state, config.train))
  else:
    state = jax.jit(init_fn, out_shardings=state_shardings)(keys)
    try:
      state = init_from.initialize(state, config)
    except init_from.InitFromError as e:
      raise ConfigError(str(e)) from None

  train_step = jax.jit(
    make_train_step(
      freezing.for_training(model, config.train, abstract_state.params, abstract_state.batch_stats),
      objective,
      tx,
      schedule,
      keys['dropout'],
      image_mean=config.data.mean,
      image_std=config.data.std,
    ),
    in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
    out_shardings=(state_shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
    compiler_options=compiler_options.for_devices(mesh.devices.flat),
  )
  # From here a stop signal is a flag the run checks, while the step compiles too; during the
  # setup above it still ends the process at once (nothing can be lost there).
  preempted = run_scope.enter_context(PreemptionFlag())
  train_step = _compile_ahead(train_step, state, config, mesh, preempted)
  if train_step is None:
    # Before the first step the workdir holds all there is: the restored checkpoint, or nothing
    # worth saving (the initial state is a function of the seed and config.model.init_from).
    logging.warning(
      'stopped by a signal while compiling the train step, before the first step '
      'at step %d: nothing to save; start the same command again to %s',
      int(jax.device_get(state.step)),
      'resume' if checkpointer.latest_step() is not None else 'begin',
    )
    checkpointer.close()
    return state
  periodic_evaluators = evaluators.for_training(config, workdir)
  embed = models.jit_embed_fn(model, mesh.devices.flat)
  first_step = int(jax.device_get(state.step))
  total = config.train.num_steps
  divergence = DivergenceCheck(config, checkpointer, first_step)
  reporter = reporting.Reporter(
    workdir,
    total_steps=total,
    global_batch_size=config.train.batch_size,
    log_every=config.train.log_every,
    first_step=first_step,
  )
  eval_every = config.eval.every_steps

  def evaluate(step: int) -> None:
    variables = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
    embedder = embedder_from_variables(config, embed, variables, step, mesh)
    for evaluator in periodic_evaluators:  # the registry's, as `python -m arcface_jax.evaluate`
      reporter.scalars(step, evaluator.run(embedder, step), prefix='eval/')
    reporter.restart_clock(step)

  step = first_step
  try:
    # Each batch's transfer is issued before the previous step's results are needed.
    with contextlib.closing(
      pipeline.prefetch_to_device(
        loader.iterate(first_step), functools.partial(parallel.global_batch, mesh)
      )
    ) as batches:
      while step < total:
        state, metrics = train_step(state, next(batches))
        step += 1
        if step == first_step + 1:
          reporter.restart_clock(step)  # the first step's time is start-up, not throughput
          reporter.add(step, metrics)
        elif reporter.add(step, metrics) is not None:
          divergence.check(state, step)
        divergence.save(state, step)
        if eval_every and step % eval_every == 0 and step != total:
          evaluate(step)
        if step_callback is not None:
          step_callback(step)
        if _stop_requested(preempted, step, config.train.log_every):
          divergence.save(state, step, force=True)
          checkpointer.wait()
          logging.warning(
            'preempted: saved a checkpoint at step %d in %s; start the same '
            'command again to resume',
            step,
            workdir,
          )
          return state
      reporter.flush(step)
      divergence.check(state, step)
      divergence.save(state, step, force=True)
      evaluate(step)
      if loader.bad_samples:
        logging.warning(
          'skipped %d unreadable samples, first keys: %s', loader.bad_samples, loader.bad_keys
        )
  finally:
    checkpointer.close()
    reporter.close()
  return state


def _compile_ahead(
  train_step,
  state: TrainState,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  preempted: PreemptionFlag,
):
  """Compiles the step before the first batch and logs its per-device memory; None when a stop
  signal arrives first.

  An out-of-memory configuration then fails here, before any data is read, and the log says how
  much each device needs. The compilation runs on a background thread so that a signal is
  honoured within a fraction of a second, not after a compile of minutes. With several processes
  it is not abandoned: they must agree on the step to stop at (`_stop_requested`).
  """
  abandon = lambda: preempted.is_set and jax.process_count() == 1
  if abandon():  # the signal came during the setup
    return None
  size, batch = config.data.image_size, config.train.batch_size
  sharding = parallel.batch_sharding(mesh)
  batch_spec = {  # the pipeline's uint8 images; the step normalises them
    'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=sharding),
    'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding),
  }
  state_spec = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding, weak_type=x.weak_type),
    state,
  )
  # Tracing holds the interpreter for long stretches, so a signal meanwhile is seen when it ends;
  # XLA's compilation, often minutes, runs with the interpreter free.
  logging.info(
    'tracing the train step (%s, batch %d of %dx%d images)', config.model.name, batch, size, size
  )
  lowered = train_step.lower(state_spec, batch_spec)
  if abandon():
    return None
  logging.info(
    'compiling the train step; a large model takes minutes on the first run, the '
    'compilation cache serves later ones'
  )
  compiling = BackgroundCompile(lowered.compile, 'the train step')
  compiled = compiling.wait(abandon)
  if compiled is None:
    return None
  memory = compiled.memory_analysis()
  if memory is not None:
    mib = lambda n: n / 2**20
    logging.info(
      'compiled the train step in %.1f s, per device: arguments %.1f MiB, outputs '
      '%.1f MiB, temporaries %.1f MiB',
      compiling.seconds,
      mib(memory.argument_size_in_bytes),
      mib(memory.output_size_in_bytes),
      mib(memory.temp_size_in_bytes),
    )
  return compiled


def _stop_requested(preempted: PreemptionFlag, step: int, every: int) -> bool:
  """A signal on any host stops every host at the same step.

  With many processes the flags are combined only every `every` steps: the all-gather is a host
  synchronisation that would otherwise stall the asynchronous dispatch of every step.
  """
  if jax.process_count() == 1:
    return preempted.is_set
  if step % max(every, 1):
    return False
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(jnp.asarray(preempted.is_set))
  return bool(flags.any())
