"""Data parallelism with jit over a device mesh: state replicated, batches split on 'data'."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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
