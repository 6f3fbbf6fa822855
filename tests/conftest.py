"""Test-wide setup: 8 virtual CPU devices and a session compilation cache, before JAX starts.

Sharded code paths (data-parallel train step, model-parallel classifier) are tested on these
virtual devices, so the suite needs no accelerator. Many tests train the same tiny recipe (and
the command-line tests start subprocesses that do too); a persistent compilation cache shared by
the session, subprocesses included through the environment, compiles each program once.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="arcface_jax_test_jit_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
