"""arcface_jax: deep face recognition with additive angular margin losses in JAX/Flax."""

__version__ = "0.1.0"
