"""SIGTERM / SIGINT: the run saves at the current step and exits 0; resuming equals never stopping."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config
from experiments import from_config, train
from experiments.data import dataset
from experiments.runtime import checkpoints, parallel, preemption, state as state_lib, train_step

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
QUICK = {'train.lr_schedule': 'constant',  # the schedule must not depend on train.steps
         'train.ckpt_every': 1000, 'sample.gif': False, 'sample.sheet': False, 'sample.steps': 1}


def _launch(workdir: str, data_dir: str) -> subprocess.Popen:
  """The tiny config of conftest, through the launcher, with far more steps than it will run."""
  flags = ['--config.model.n_feat=8', '--config.train.batch_size=16', '--config.train.steps=100000',
           '--config.train.log_every=1', '--config.train.ckpt_every=100000',
           '--config.train.lr_schedule=constant', f'--config.data.data_dir={data_dir}',
           '--config.runtime.compile_cache=False']
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')  # the tests' cache: compile once
  return subprocess.Popen(
      [sys.executable, 'launch.py', '--config=configs/sprites.py:smoke', f'--workdir={workdir}',
       *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_a_logged_step(proc, metrics: str, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while not (os.path.exists(metrics) and open(metrics).read().strip()):
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      pytest.fail(f'the run logged no step (exit {proc.poll()}):\n{proc.communicate()[0][-3000:]}')
    time.sleep(0.2)


def _final(config, workdir):
  return state_lib.create_or_restore(mesh=parallel.make_mesh(), mngr=checkpoints.manager(workdir, 5),
                                     must_exist=True, **from_config.state_kwargs(config, 8))


def _uninterrupted(config):
  """The state after config.train.steps steps from scratch, one dispatch each, as train.run takes
  them (without its checkpoints and samples, which the resumed run's test does not need twice)."""
  mesh, data = parallel.make_mesh(), dataset.load(config.data, 'train')
  kwargs = from_config.state_kwargs(config, data.num_classes)
  state = state_lib.create(mesh=mesh, **kwargs)
  step_fn = train_step.make(model=kwargs['model'], tx=kwargs['tx'], mesh=mesh,
                            **from_config.train_step_kwargs(config, data.num_classes, 'cpu'))
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  for _ in range(config.train.steps):
    state, _ = step_fn(state, images, labels, key)
  return state


def test_sigterm_saves_the_current_step_exits_0_and_resumes_exactly(tmp_path, data_dir):
  stopped = str(tmp_path / 'stopped')
  proc = _launch(stopped, data_dir)
  _wait_for_a_logged_step(proc, os.path.join(stopped, 'metrics.jsonl'))
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output[-3000:]
  assert time.time() - sent < 60, 'the save after SIGTERM must take seconds, not minutes'
  logged = [json.loads(line)['step'] for line in open(os.path.join(stopped, 'metrics.jsonl'))]
  step = checkpoints.manager(stopped, 5).latest_step()
  assert step == logged[-1], 'the checkpoint holds the step the run had reached'
  hint = re.search(r'To resume, run (\S+) launch\.py --config=configs/sprites\.py:smoke', output)
  assert hint and os.path.samefile(os.path.join(ROOT, hint.group(1)), sys.executable), \
      'a stopped run says how to resume, with the interpreter that ran it'
  assert not os.path.exists(os.path.join(stopped, 'samples')), 'a stopped run draws nothing'

  config = tiny_config(data_dir, **{'train.steps': step + 2}, **QUICK)
  train.run(config, stopped)
  a, b = _uninterrupted(config), _final(config, stopped)
  assert int(a.step) == int(b.step) == step + 2
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6),
               (a.params, a.ema_params, a.opt_state), (b.params, b.ema_params, b.opt_state))
  rows = [json.loads(line)['step'] for line in open(os.path.join(stopped, 'metrics.jsonl'))]
  assert rows == sorted(set(rows)), 'no step is logged twice after a resume'


def test_a_second_signal_gets_the_previous_handler_back():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test installed
  try:
    with preemption.StopOnSignal() as stop:
      assert not stop.requested()
      os.kill(os.getpid(), signal.SIGINT)
      assert stop.requested() and stop.received == 'SIGINT'
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
  finally:
    for s, handler in before.items():
      signal.signal(s, handler)
