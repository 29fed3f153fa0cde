import os

# Several host devices let the sharding tests run on a CPU-only machine; it must be set
# before JAX initializes its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64 (jax_enable_x64), restoring the previous setting after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
