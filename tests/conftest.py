"""Test-wide setup: 8 virtual CPU devices, set before JAX is imported anywhere.

Sharded code paths (data-parallel train step, model-parallel classifier) are tested on
these virtual devices, so the suite needs no accelerator.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
