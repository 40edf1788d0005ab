"""Data parallelism with jit over a device mesh: state replicated, batches split on 'data'.

The mesh spans the devices of every process. The training split is small (1,456 emoji sprites are
1 MB), so each process puts it whole on its own devices and each step gathers its batch on
device by index (runtime/train_step.py): nothing is fed per step, and a step sees the same
examples at any device or host count. Feeding each host its share of a global batch
(jax.make_array_from_process_local_data) pays off once a split no longer fits on a device.
"""
import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.flatten_util import ravel_pytree
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


class Window:
  """Keeps at most `depth` dispatched calls unfinished: add(out) waits for the call `depth` back.

  JAX returns from a jitted call before it runs, so a loop of train steps that never reads a
  result queues all of them. XLA:CPU (jax 0.10.2) then runs the queued steps' collectives on
  its shared thread pool and, with the CPU split into devices, the devices' all-to-all can wait
  on each other for good ("Termination timeout ... all to all" and an abort): the cpu preset's
  step, 600 calls queued, hung 2 runs of 2 on 2 cores; read every 100 or every call, 0 of 8;
  with this window, 0 of 5.
  Two calls in flight still hide the host's dispatch time on every backend.
  """

  def __init__(self, depth: int = 2):
    self.depth, self._pending = depth, collections.deque()

  def add(self, out) -> None:
    self._pending.append(out)
    if len(self._pending) > self.depth:
      jax.block_until_ready(self._pending.popleft())


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


def _fixed_order_mean(tree, axis: str):
  """The mean over `axis` of every device's `tree`, added up in device order (inside shard_map).

  A psum adds in an order that depends on the transport (within a process or across them), so
  the same 8 devices as 1 or 2 processes would round differently. Here collectives only move
  data: all_to_all hands device i slice i of everyone's flattened tree, which it adds up in
  device order, and all_gather returns the sums: the traffic of a ring all-reduce.
  """
  flat, unravel = ravel_pytree(tree)
  n, size = jax.lax.axis_size(axis), flat.size
  rows = jnp.pad(flat, (0, -size % n)).reshape(n, -1)
  mine = jax.lax.all_to_all(rows, axis, 0, 0, tiled=True)  # row j: device j's copy of my slice
  return unravel(jax.lax.all_gather(jnp.sum(mine, axis=0) / n, axis, tiled=True)[:size])


def mean_value_and_grad(loss_fn, mesh: Mesh):
  """(params, batch) -> (loss, grads) of loss_fn's mean over a batch split on 'data', the same
  bits whether the mesh's devices belong to one process or several. loss_fn(params, batch)
  gets one device's rows and returns their mean loss."""
  def per_device(params, batch):
    return _fixed_order_mean(jax.value_and_grad(loss_fn)(params, batch), 'data')
  # check_vma=False: with the check on, JAX sums the gradients of replicated params across
  # devices itself (the transpose of pvary is a psum), in the transport's order.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P('data')), out_specs=P(),
                       check_vma=False)
