"""Several processes as one program: the hosts of a TPU pod, the tasks of a SLURM job, or local
CPU processes in the tests.

`start` joins them with jax.distributed.initialize. From then on every process runs the same
jitted computations, collectives, checkpoint saves and restores, in the same order; process 0
alone writes files and logs. Work that only process 0 does (building the dataset, training the
feature network, writing outputs) ends at a barrier of the coordination service, which waits as
long as that work takes (a first CPU collective, in contrast, gives up after 30 s when a peer is
late: the gloo context's set-up timeout in jax 0.10.2).
"""
import contextlib
import dataclasses
import itertools
import os
from typing import Callable, TypeVar

import jax
import orbax.checkpoint as ocp
from absl import app, flags, logging

from experiments.runtime import parallel

T = TypeVar('T')
# The names users already set for JAX: jax 0.10.2 reads the first itself and has no variable for
# the other two, so these two are this project's convention (the flags win over them).
ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES',
       'process_id': 'JAX_PROCESS_ID'}
WAIT_S = 3_600  # how long the others wait for process 0: a dataset build, an evaluation
_barriers = itertools.count()


def define_flags() -> None:
  """--multihost and the three values that name a cluster JAX cannot detect by itself."""
  if 'multihost' in flags.FLAGS:  # launch.py and experiments/sweep.py both define them
    return
  flags.DEFINE_bool('multihost', False, 'Join the other processes of a multi-host run (TPU pod '
                    'slices and SLURM jobs are detected; elsewhere give the three flags below).')
  flags.DEFINE_string('coordinator_address', None,
                      f'HOST:PORT of process 0 (or ${ENV["coordinator_address"]}).')
  flags.DEFINE_integer('num_processes', None, f'Processes in the run (or ${ENV["num_processes"]}).')
  flags.DEFINE_integer('process_id', None,
                       f'This process, 0..num_processes-1 (or ${ENV["process_id"]}).')


@dataclasses.dataclass(frozen=True)
class Cluster:
  """What jax.distributed.initialize is told; all None: it detects the cluster itself."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def initialize_kwargs(self) -> dict:
    if self.num_processes is None:
      return {'coordinator_address': self.coordinator_address}
    # Given explicitly: never probe SLURM, Open MPI or Kubernetes variables a CI runner may have.
    return {**dataclasses.asdict(self), 'cluster_detection_method': 'deactivate'}


def _from_env(name: str, environ) -> str | int | None:
  text = environ.get(ENV[name], '').strip()
  if not text or name == 'coordinator_address':
    return text or None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f'{ENV[name]}={text!r}: want an integer.') from None


def cluster(multihost: bool, given: dict, environ=os.environ) -> Cluster | None:
  """The cluster to join (None: run alone), from the flags in `given`, else the environment.
  Raises ValueError naming what is missing or wrong."""
  given = {k: v for k, v in given.items() if v is not None}
  if not multihost:
    if given:
      raise ValueError(f'--{", --".join(given)}: for multi-host runs, with --multihost.')
    return None
  values = {name: given.get(name, _from_env(name, environ)) for name in ENV}
  address, count, index = (values[name] for name in ENV)
  if count is None and index is None:
    return Cluster(address)
  missing = [f'--{name} (or ${ENV[name]})' for name, v in values.items() if v is None]
  if missing:
    raise ValueError(f'--multihost with explicit values needs all three; missing: '
                     f'{", ".join(missing)}.')
  if not 0 <= index < count:
    raise ValueError(f'process_id={index} must be in 0..{count - 1} (num_processes={count}).')
  if not address.rpartition(':')[2].isdigit():
    raise ValueError(f'coordinator_address={address!r}: want HOST:PORT, e.g. 10.0.0.2:1234.')
  return Cluster(address, count, index)


def start(config) -> None:
  """Split the CPU into devices and, with --multihost, join the other processes. Call it before
  anything touches a JAX device: both settings are read when the backend starts."""
  try:
    joined = cluster(flags.FLAGS.multihost, {name: flags.FLAGS[name].value for name in ENV})
  except ValueError as e:
    raise app.UsageError(str(e)) from None  # the message alone: it names what to pass
  parallel.configure_cpu_devices(config.runtime.cpu_devices, config.train.batch_size)
  if joined is None:
    return
  # CPU processes reduce over gloo: the default in jax 0.10.2, set so that another default
  # cannot leave them without cross-process collectives. GPUs and TPUs ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  _initialize(joined)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # process 0 alone logs progress; all warn
  logging.info('Joined %d processes; %d of the %d devices are here.', jax.process_count(),
               jax.local_device_count(), jax.device_count())


def _initialize(joined: Cluster) -> None:
  try:
    jax.distributed.initialize(**joined.initialize_kwargs())
  except ValueError as e:
    if joined.num_processes is not None:
      raise
    raise app.UsageError(
        f'--multihost: JAX found no cluster to join ({e}); it detects Cloud TPU pod slices, '
        'SLURM, Open MPI and Kubernetes jobs. Elsewhere pass --coordinator_address=HOST:PORT '
        '--num_processes=N --process_id=I to every process (or set '
        f'{", ".join(ENV.values())}).') from e


def barrier(name: str, timeout_s: int = WAIT_S) -> None:
  """Return once every process got here; nothing to wait for with one process. Every process
  must call it, in the same order (each call is a new barrier)."""
  count = jax.process_count()
  if count > 1:
    ocp.multihost.sync_global_processes(f'{name} #{next(_barriers)}', timeout=timeout_s,
                                        processes=set(range(count)))


@contextlib.contextmanager
def then_barrier(name: str):
  """The body, then barrier(name), reached even when the body raised: process 0's own work
  (writing outputs, the feature network) may fail where the others only wait at this barrier,
  and they would wait WAIT_S for it. They go on; process 0 reports the error."""
  try:
    yield
  finally:
    barrier(name)


def writer_first(name: str, fn: Callable[[], T]) -> T:
  """fn() in process 0, then in the others once it has returned: for work that fills a cache on
  disk (the dataset), so that the others read it instead of building it at the same time. Where
  the cache folder is not shared (a TPU VM's own disk), the others find nothing there and each
  builds its own copy."""
  if jax.process_count() == 1:
    return fn()
  first = jax.process_index() == 0
  with then_barrier(f'{name} by process 0'):  # if it fails, the others try (and say why) too
    result = fn() if first else None
  return result if first else fn()
