"""Two local processes (2 CPU devices each, gloo) run launch.py --multihost as one program.

One process with 4 CPU devices trains the smoke preset shrunk and samples. Two processes resume its
first checkpoint (a 1-process checkpoint restored in 2), build a fresh data dir, train the other
steps, sample and evaluate. Their losses, parameters and outputs equal the one process's to the bit
(their checkpoint restored in this 1 process): the gradient mean adds devices up in a fixed order
(parallel.mean_value_and_grad), and every process gets the same XLA:CPU thread pool (PJRT_NPROC).
The two processes take about 60 CPU-seconds, the whole file about 85 (2 cores).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, tiny_config
from experiments import from_config
from experiments.runtime import checkpoints, hosts, parallel, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
# The smoke preset as conftest.tiny_config shrinks it, plus an evaluation at the end.
OVERRIDES = {'model.n_feat': 8, 'train.steps': STEPS, 'train.batch_size': 16,
             'train.log_every': 1, 'train.ckpt_every': STEPS, 'sample.sampler': 'ddim',
             'sample.steps': 4, 'sample.per_class': 1, 'sample.gif_frames': 3,
             'sample.batch_size': 64, 'eval.feature_steps': 20, 'eval.repeats': 1,
             'eval.num_samples': 8, 'eval.nearest_shown': 6}
# Children get one XLA:CPU thread-pool size, max(PJRT_NPROC, local devices), which changes how
# convolutions round; not conftest's 8 devices; and conftest's XLA flags that compile the
# initializer 4x and the train step 2x faster (the same flags in every run, so still bitwise
# comparable).
ENV = {'PJRT_NPROC': '4', 'XLA_FLAGS': FAST_COMPILE, 'JAX_PLATFORMS': 'cpu',
       'PYTHONUNBUFFERED': '1', 'PYTHONFAULTHANDLER': '1'}  # SIGABRT prints a hung child's stacks
# A proxy can hang the coordinator's gRPC connection; the cluster comes from the test alone.
DROP = ('http_proxy', 'https_proxy', 'all_proxy', 'grpc_proxy', 'JAX_COORDINATOR_ADDRESS',
        'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(extra: dict) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in DROP and k.lower() not in DROP}
  return {**env, **ENV, **extra}


def _stop(procs) -> None:
  """Stacks first (SIGABRT with faulthandler), then SIGKILL for each process group left."""
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    os.killpg(p.pid, signal.SIGABRT)
  deadline = time.monotonic() + 3
  while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
    time.sleep(0.1)
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _start_all(commands: list[tuple[list[str], dict]], timeout_s: float) -> list[tuple[int, str]]:
  """Run every (argv, env) at once; when one fails or time runs out, stop the rest at once (a
  survivor would wait in a collective). Returns each one's exit code and output."""
  logs = [tempfile.TemporaryFile('w+') for _ in commands]
  procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True) for (argv, env), log in zip(commands, logs)]
  deadline = time.monotonic() + timeout_s
  try:
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.1)
  finally:
    _stop(procs)
  out = []
  for p, log in zip(procs, logs):
    log.seek(0)
    out.append((p.returncode, log.read()))
    log.close()
  return out


def launch(workdir: str, data_dir: str, processes: int, **overrides) -> list[str]:
  """launch.py in `processes` processes of 4 // processes CPU devices; each one's output. The
  coordinator comes as a flag, the process count and id in the environment."""
  config = {**OVERRIDES, 'data.data_dir': data_dir, 'runtime.cpu_devices': 4 // processes,
            **overrides}
  argv = [sys.executable, 'launch.py', '--config=configs/sprites.py:smoke', f'--workdir={workdir}']
  argv += [f'--config.{k}={v}' for k, v in config.items()]
  for attempt in range(3):
    port = _free_port()
    flags = ['--multihost', f'--coordinator_address=127.0.0.1:{port}'] if processes > 1 else []
    commands = [(argv + flags, _env({'JAX_NUM_PROCESSES': str(processes), 'JAX_PROCESS_ID': str(i)}))
                for i in range(processes)]
    results = _start_all(commands, TIMEOUT_S)
    if attempt < 2 and 'Failed to start RPC server' in results[0][1]:
      continue  # the free port was taken before process 0 bound it
    break
  if any(rc != 0 for rc, _ in results):
    pytest.fail('\n'.join(f'--- process {i}: exit {rc} ---\n{text[-6000:]}'
                          for i, (rc, text) in enumerate(results)))
  return [text for _, text in results]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """One process trains (a checkpoint every step) and samples. Two processes resume its first
  checkpoint for the other steps, in a data dir not built yet, then sample and evaluate."""
  root = tmp_path_factory.mktemp('multihost')
  one, two = str(root / 'one'), str(root / 'two')
  start = time.perf_counter()
  out = {'one': launch(one, str(root / 'data_one'), 1,
                       **{'train.ckpt_every': 1, 'train.keep_checkpoints': STEPS})}
  shutil.copytree(os.path.join(one, 'checkpoints', '1'), os.path.join(two, 'checkpoints', '1'))
  out['two'] = launch(two, str(root / 'data_two'), 2, **{'eval.at_end': True})
  print(f'multihost runs: {time.perf_counter() - start:.0f} s')
  return {'one': one, 'two': two, 'out': out}


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f)}


def _state(workdir: str):
  """The run's last checkpoint restored here: one process with conftest's 8 devices."""
  return state_lib.create_or_restore(
      mesh=parallel.make_mesh(), mngr=checkpoints.manager(workdir, 1), must_exist=True,
      **from_config.state_kwargs(tiny_config('unused'), 8))


def test_two_processes_resume_and_train_like_one_to_the_bit(runs):
  one, two = _losses(runs['one']), _losses(runs['two'])
  assert sorted(one) == list(range(1, STEPS + 1)) and sorted(two) == list(range(2, STEPS + 1))
  assert two == {step: one[step] for step in two}
  restored = _state(runs['two']), _state(runs['one'])  # the first written by 2 processes
  assert int(restored[0].step) == int(restored[1].step) == STEPS
  for a, b in zip(*(jax.tree.leaves(state) for state in restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  stem = os.path.join('samples', f'step{STEPS:06d}_ddim4')
  for ext in ('.npz', '.png', '.gif', '_sheet.png', '_sheet.json'):
    assert _read(os.path.join(runs['two'], stem + ext)) == _read(os.path.join(runs['one'], stem + ext)), ext


def _outputs(workdir: str) -> set[str]:
  """Every file but the checkpoints' insides (each process writes its share), with TensorBoard's
  event file named by kind only (its name holds the host and time)."""
  found = set()
  for folder, _, names in os.walk(workdir):
    rel = os.path.relpath(folder, workdir)
    if rel == 'tensorboard':
      found |= {os.path.join(rel, n.split('.')[0]) for n in names}
    elif rel.split(os.sep)[0] != 'checkpoints':
      found |= {os.path.normpath(os.path.join(rel, n)) for n in names}
  return found


def test_process_0_alone_writes_and_logs(runs):
  written = _outputs(runs['two'])
  evaluation = {os.path.join('eval', f'step{STEPS:06d}_ddim4{end}')
                for end in ('.json', '_nearest.png', '_samples.npz')} | {'eval.json', 'nearest.png'}
  assert written == _outputs(runs['one']) | evaluation
  assert sorted(os.listdir(os.path.join(runs['two'], 'checkpoints'))) == ['1', str(STEPS)]
  first, second = runs['out']['two']
  assert f'step {STEPS}/{STEPS}' in first and f'eval of step{STEPS:06d}_ddim4' in first
  assert 'step 2/' not in second and 'eval of' not in second and 'Wrote' not in second


def test_process_0_alone_builds_the_dataset(runs):
  assert ['Built sprites/' in text for text in runs['out']['two']] == [True, False]


def test_sigterm_to_one_process_stops_both_at_one_saved_step_with_several_steps_per_dispatch(
    tmp_path):
  """JAX's preemption sync point is reached when a process reports exactly the largest count
  seen plus one: counting training steps, which grow by steps_per_dispatch (10 on accelerators),
  stepped over it, and a multi-host run never saved on SIGTERM."""
  workdir = str(tmp_path / 'run')
  config = {**OVERRIDES, 'data.data_dir': str(tmp_path / 'data'), 'runtime.cpu_devices': 2,
            'train.steps': 100_000, 'train.steps_per_dispatch': 2, 'train.ckpt_every': 100_000}
  argv = [sys.executable, 'launch.py', '--config=configs/sprites.py:smoke', f'--workdir={workdir}',
          '--multihost', f'--coordinator_address=127.0.0.1:{_free_port()}']
  argv += [f'--config.{k}={v}' for k, v in config.items()]
  logs = [tempfile.TemporaryFile('w+') for _ in range(2)]
  procs = [subprocess.Popen(argv, env=_env({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)}),
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
           for i, log in enumerate(logs)]
  metrics, deadline = os.path.join(workdir, 'metrics.jsonl'), time.monotonic() + TIMEOUT_S
  try:
    while not (os.path.exists(metrics) and open(metrics).read().count('\n') >= 2):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), 'no step logged'
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # the notice reaches one process; both must stop
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      time.sleep(0.1)
  finally:
    _stop(procs)
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(text[-3000:] for text in outputs)
  logged = [json.loads(line)['step'] for line in open(metrics)]
  saved = checkpoints.manager(workdir, 1, create=False).latest_step()
  assert saved == logged[-1] and saved % 2 == 0 and saved < 100_000
  for text in outputs:
    assert f'Stopped by SIGTERM (preemption notice) at step {saved}' in text


def test_cluster_values_come_from_flags_then_the_environment():
  env = {'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}
  assert hosts.cluster(False, {}, env) is None
  assert hosts.cluster(True, {}, {}) == hosts.Cluster()  # JAX detects TPU pods and SLURM itself
  assert hosts.cluster(True, {}, env) == hosts.Cluster('h:1', 4, 3)
  assert hosts.cluster(True, {'process_id': 0}, env) == hosts.Cluster('h:1', 4, 0)
  explicit = hosts.cluster(True, {'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 1}, {})
  assert explicit.initialize_kwargs()['cluster_detection_method'] == 'deactivate'
  assert 'cluster_detection_method' not in hosts.Cluster('h:1').initialize_kwargs()


@pytest.mark.parametrize('multihost, given, env, message', [
    (True, {'num_processes': 2}, {}, r'missing: --coordinator_address .*, --process_id \(or \$JAX_PROCESS_ID\)'),
    (True, {'process_id': 1}, {'JAX_COORDINATOR_ADDRESS': 'h:1'}, r'missing: --num_processes'),
    (True, {'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2}, {}, r'in 0\.\.1'),
    (True, {'coordinator_address': 'h', 'num_processes': 2, 'process_id': 0}, {}, 'HOST:PORT'),
    (True, {}, {'JAX_NUM_PROCESSES': 'two', 'JAX_PROCESS_ID': '0'}, r'JAX_NUM_PROCESSES=.two.: want an integer'),
    (False, {'process_id': 0}, {}, r'--process_id: for multi-host runs, with --multihost'),
])
def test_incomplete_cluster_values_are_named(multihost, given, env, message):
  with pytest.raises(ValueError, match=message):
    hosts.cluster(multihost, given, env)


def test_a_failure_in_process_0s_own_work_still_releases_the_others(monkeypatch):
  """The others wait at a barrier while process 0 builds the dataset, writes outputs or measures:
  if that fails, the barrier must still be reached, or they wait hosts.WAIT_S (an hour)."""
  reached = []
  monkeypatch.setattr(hosts, 'barrier', reached.append)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 0)

  def build():
    raise ValueError('no sprites in the folder')
  with pytest.raises(ValueError, match='no sprites'):
    hosts.writer_first('dataset', build)
  assert reached == ['dataset by process 0']
  with pytest.raises(OSError, match='disk full'):
    with hosts.then_barrier('samples written'):
      raise OSError('disk full')
  assert reached == ['dataset by process 0', 'samples written']
