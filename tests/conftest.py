"""Test-wide setup: 8 virtual CPU devices and a persistent compilation cache, before JAX starts.

Sharded code paths (data-parallel train step, model-parallel classifier) are tested on these
virtual devices, so the suite needs no accelerator. Many tests train the same tiny recipe (and
the command-line tests start subprocesses that do too); a persistent compilation cache shared by
the session, its xdist workers and subprocesses included through the environment, compiles each
program once. It lives in the checkout's .pytest_cache (`pytest --cache-clear` empties it), so a
second run of the suite only compiles what changed; a fresh clone starts cold.
"""

import os
import shutil

# LLVM optimisation is about half of XLA:CPU's compile time, and the suite compiles hundreds of
# programs at tiny shapes where it buys nothing: level 0 halves the compile CPU time of a tiny
# train step (35 → 15 CPU-s measured). Subprocesses inherit these flags.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set here once; xdist workers inherit it
  _CACHE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ".pytest_cache",
    "jax_compilation_cache",
  )
  # JAX never evicts without a size limit (and its limit needs the filelock package): programs
  # of code since changed would pile up, so past 2 GiB the cache starts over.
  if os.path.isdir(_CACHE) and sum(
    entry.stat().st_size for entry in os.scandir(_CACHE) if entry.is_file()
  ) > (2 << 30):
    shutil.rmtree(_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402  (after the environment above, which must precede any JAX import)

# Test modules that train a run, compile a deep backbone, start the page or drive a reference
# implementation: each costs tens of seconds on a 2-core CPU. `make test-fast` (the quick check
# before a commit) leaves them out; `make test` runs everything but the `slow` tier.
HEAVY_MODULES = frozenset(
  {
    'test_analysis',
    'test_app',
    'test_app_browser',
    'test_checkpointing',
    'test_checkpointing_models',
    'test_configs',
    'test_cpu_conv',
    'test_evaluate_closed_set',
    'test_export',
    'test_faces',
    'test_faces_cli',
    'test_faces_photos',
    'test_margin_heads',
    'test_model_import',
    'test_mtcnn_reference',
    'test_multiprocess',
    'test_onnx_export',
    'test_remote_workdir',
    'test_search',
    'test_subcenter_clean',
    'test_train',
    'test_transfer',
    'test_init_from',
    'test_evaluate_command',
    'test_seeding',
    'test_margins_adaptive',
    'test_margin_head',
  }
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.module.__name__.rsplit('.', 1)[-1] in HEAVY_MODULES:
      item.add_marker(pytest.mark.heavy)
