"""Test-wide setup: 8 virtual CPU devices and a session compilation cache, before JAX starts.

Sharded code paths (data-parallel train step, model-parallel classifier) are tested on these
virtual devices, so the suite needs no accelerator. Many tests train the same tiny recipe (and
the command-line tests start subprocesses that do too); a persistent compilation cache shared by
the session, subprocesses included through the environment, compiles each program once.
"""

import os
import tempfile

# LLVM optimisation is about half of XLA:CPU's compile time, and the suite compiles hundreds of
# programs at tiny shapes where it buys nothing: level 0 halves the compile CPU time of a tiny
# train step (35 → 15 CPU-s measured). Subprocesses inherit these flags.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="arcface_jax_test_jit_cache_")
)
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
