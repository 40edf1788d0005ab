"""Data parallelism with jit over a device mesh: state replicated, batches split on 'data'.

The mesh spans the devices of every process. The training split is small (1,456 emoji sprites are
1 MB), so each process puts it whole on its own devices and each step gathers its batch on
device by index (runtime/train_step.py): nothing is fed per step, and a step sees the same
examples at any device or host count. Feeding each host its share of a global batch
(jax.make_array_from_process_local_data) pays off once a split no longer fits on a device.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def configure_cpu_devices(requested: int, batch_size: int) -> int:
  """Split the CPU into several XLA devices; call before JAX touches a device.

  XLA:CPU runs some convolutions (the 16x16x64 ones that dominate the course's model) on a
  single thread, so one device per core, with the batch split over them like over GPUs,
  is ~2x faster on 2 cores than one device (experiments/benchmark.py). `requested` = 0 picks
  the most devices <= cores that divide the batch. No effect on GPU or TPU backends.
  """
  if requested <= 0:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    requested = max(d for d in range(1, (cores or 1) + 1) if batch_size % d == 0)
  if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', requested)
  return requested


def make_mesh(devices=None) -> Mesh:
  """A 1-D 'data' mesh over all devices (or the given ones)."""
  devices = jax.devices() if devices is None else devices
  # Auto axes: XLA's partitioner propagates shardings from the constraints we place.
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def put_replicated(tree, mesh: Mesh):
  """Host arrays that every process holds whole -> global arrays replicated on every device."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]),
      tree)


def check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise ValueError(f'{what}={batch_size} does not split over {mesh.size} devices; '
                     f'use a multiple of {mesh.size}.')


def gather(x) -> np.ndarray:
  """`x` whole, as numpy, in every process. A batch-sharded array spans other hosts' devices,
  which np.asarray cannot read; then this is a collective that every process must call."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)
