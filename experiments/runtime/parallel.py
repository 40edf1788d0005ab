"""Data parallelism with jit over a device mesh: state replicated, batches split on 'data'."""
import os

import jax
import numpy as np
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
