"""The device mesh the trainer uses, and the placement of host batches onto it."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A one-axis mesh over the first `num_devices` devices (all devices by default, all hosts).

  The axis type is Auto on purpose: the train step is written once for replicated parameters and a
  batch-sharded input, and XLA's partitioner inserts the collectives. (jax.make_mesh now defaults
  to Explicit axes, which would require sharding annotations on every intermediate.)
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f'num_devices={num_devices} but {len(devices)} devices are available')
  return jax.make_mesh(
    (num_devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:num_devices]
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, Any]:
  """Assembles each process's slice of the batch into global arrays sharded over `data`.

  With one process this is a device_put; with many, every process passes only the rows it read.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
