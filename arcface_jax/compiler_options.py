"""XLA compiler options for jitting the models on CPU: dense convolutions off YNNPACK.

XLA:CPU hands three kinds of work to its YNNPACK library by default: matrix products, reductions
(with the elementwise ops around them) and convolutions. For the dense k×k convolutions of
IResNet its own convolution runtime is faster: IResNet-50's 3×3 64→64 convolution at 56×56,
batch 8, takes ~15 ms forward against YNNPACK's ~35 ms; summed over IResNet-50's convolutions
its weight gradients take 961 ms against PyTorch's 1,152 ms, where YNNPACK's took ~2 s for the
64→64 at 112×112 alone (`benchmarks/backbone.py --breakdown`). Dropping the
convolutions from YNNPACK's share (`xla_cpu_experimental_ynn_fusion_type` without
`INDIVIDUAL_CONVOLUTION`) made the IResNet-50 train step 1.24× faster and its XLA temporaries
837 → 503 MiB, and left MobileFaceNet's step (depthwise convolutions as sums of products, 1×1
convolutions as matrix products, `models/cpu_conv.py`) as it was (`benchmarks/backbone.py`,
docs/benchmarks.md). Embedding (`models.jit_embed_fn`) is 1.3–1.8× faster with them
(IResNet-50, MobileFaceNet and iresnet_tiny at 112 px, batch 1 and 32): outside
differentiation 1×1 convolutions are the convolution primitive too.
The trainer's step, every embedder and the benchmarks' steps compile with these options.

The options are per compilation (`jax.jit(..., compiler_options=...)`), so they change nothing
for code that jits the models itself, nor on other platforms. A jaxlib that does not know the
option compiles without it, once warned.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

# XLA:CPU's default set is REDUCE, INDIVIDUAL_DOT and INDIVIDUAL_CONVOLUTION (jaxlib 0.10.2:
# compiling IResNet-18's gradient with these three, with or without DOT, gives the default
# executable).
_YNN_FUSION_TYPES = ('LIBRARY_FUSION_TYPE_REDUCE', 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT')
_CPU_OPTIONS: dict[str, str | bool] = {
  'xla_cpu_experimental_ynn_fusion_type': ','.join(_YNN_FUSION_TYPES)
}


@functools.cache
def for_platform(platform: str) -> dict[str, str | bool]:
  """Compiler options for a jitted model on `platform` ('cpu', 'gpu', 'tpu'); {} off CPU."""
  if platform != 'cpu':
    return {}
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(
      compiler_options=_CPU_OPTIONS
    )
  except jax.errors.JaxRuntimeError as e:
    logging.warning(
      'XLA:CPU rejected %s (%s); models compile with XLA defaults, slower for dense convolutions',
      sorted(_CPU_OPTIONS),
      str(e).splitlines()[0],
    )
    return {}
  return dict(_CPU_OPTIONS)


def for_devices(devices: Iterable[Any] | None = None) -> dict[str, str | bool]:
  """`for_platform` of the devices' platform (default: JAX's default backend)."""
  platforms = {device.platform for device in devices} if devices is not None else set()
  platform = platforms.pop() if len(platforms) == 1 else jax.default_backend()
  return for_platform(platform)
