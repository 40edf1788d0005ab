"""Speed figures as JSON lines: training images/s, sampling sprites/s, time to first step, memory.

  python -m experiments.benchmark                 # the full set (meant for a GPU)
  python -m experiments.benchmark --quick         # a few steps of each: CPU / CI friendly
  python -m experiments.benchmark --quick --peer=../shared/bench/ref_torch.py --peer_python=python
  python -m experiments.benchmark --what=train100 --peer=...   # only the course setting, both sides
  python -m experiments.benchmark --what=models --models=1,2,4,8  # k models in one vmapped step

With --peer, the PyTorch peer runs in the same invocation on the same machine and ratio
lines (this project / peer) follow. Every line names the device, the jax version and the
settings. Training runs on synthetic sprites (speed does not depend on pixel values).
"""
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import sprites
from experiments import from_config
from experiments.runtime import drawing, multi_train, parallel, state as state_lib, train_step

_QUICK = flags.DEFINE_bool('quick', False, 'Few steps and 16 sprites: a CPU-friendly check.')
_WHAT = flags.DEFINE_list('what', ['train', 'sample', 'first_step'],
                          'Which figures to measure: train, sample, first_step, models (k models '
                          'in one vmapped step, the cpu preset\'s model and batch), or train100 '
                          'alone (the course setting, batch 100 fp32, 30 steps on CPU, 300 '
                          'otherwise; the peer then runs its own train100 mode).')
_MODELS = flags.DEFINE_list('models', ['1', '2', '4'], 'With --what=models: the k to measure.')
_PEER = flags.DEFINE_string('peer', '', 'Path of the PyTorch peer (ref_torch.py) to run alongside.')
_PEER_PYTHON = flags.DEFINE_string('peer_python', sys.executable, 'Python that has torch.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 0, 'On CPU: XLA devices to split batches over; 0 = one per core (as launch.py).')
_STEPS_PER_DISPATCH = flags.DEFINE_integer(
    'steps_per_dispatch', 0, 'Train steps per jitted call; 0 = 1 on CPU, 10 on accelerators.')

COURSE_CLASSES = 5


def emit(record: dict) -> dict:
  dev = jax.devices()[0]
  record = {**record, 'device': dev.device_kind, 'platform': dev.platform,
            'num_devices': jax.device_count(), 'jax': jax.__version__}
  print(json.dumps(record), flush=True)
  return record


def peak_memory_mb() -> float:
  """Peak device memory on accelerators; the process's peak resident memory on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _course_config(batch: int, dtype: str, n_feat: int = 64):
  c = sprites.get_config('course')
  c.model.update(n_feat=n_feat, dtype=dtype)
  c.train.batch_size = batch
  return c


def train_speed(config, label: str, steps: int, per_dispatch: int, num_classes: int) -> dict:
  """Images/s of the real jitted train step (donated state, data gathered on device)."""
  mesh = parallel.make_mesh()
  model = from_config.model(config.model, num_classes)
  tx = from_config.optimizer(config.train)
  kwargs = from_config.train_step_kwargs(config, num_classes, jax.default_backend())
  kwargs['steps_per_dispatch'] = per_dispatch
  step = train_step.make(model=model, tx=tx, mesh=mesh, **kwargs)
  batch = config.train.batch_size
  state = state_lib.create(model=model, tx=tx, seed=0, image_size=config.data.image_size,
                           num_classes=num_classes, mesh=mesh)
  calls = max(steps // per_dispatch, 1)
  compile_s, seconds, metrics = _timed(step, state, _synthetic(config, num_classes, mesh),
                                       jax.random.key(1), calls=calls)
  return emit({'what': 'train', 'model': label, 'n_feat': config.model.n_feat,
               'batch': batch, 'dtype': config.model.dtype,
               'steps_per_dispatch': per_dispatch, 'steps': calls * per_dispatch,
               'img_per_s': calls * per_dispatch * batch / seconds,
               'step_ms': 1e3 * seconds / (calls * per_dispatch), 'first_call_s': compile_s,
               'loss': float(metrics['loss']), 'peak_memory_mb': peak_memory_mb()})


def _synthetic(config, num_classes: int, mesh):
  """4,096 random sprites and labels, replicated (speed does not depend on pixel values)."""
  size, rng = config.data.image_size, np.random.default_rng(0)
  return parallel.put_replicated((rng.integers(0, 256, (4096, size, size, 3), dtype=np.uint8),
                                  rng.integers(0, num_classes, 4096).astype(np.int32)), mesh)


def _timed(step, state, data, *args, calls: int):
  """(seconds of the first call, seconds of `calls` calls after one more warm-up, metrics)."""
  start = time.perf_counter()
  state, metrics = step(state, *data, *args)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  state, metrics = step(state, *data, *args)
  jax.block_until_ready(metrics)
  start, window = time.perf_counter(), parallel.Window()  # as the training loops dispatch
  for _ in range(calls):
    state, metrics = step(state, *data, *args)
    window.add(metrics)
  jax.block_until_ready(metrics)
  return compile_s, time.perf_counter() - start, metrics


def models_speed(config, models: int, steps: int, per_dispatch: int, num_classes: int) -> dict:
  """k models (seeds 0..k-1) trained as one vmapped step (runtime/multi_train.py): models x
  images/s is the figure to compare with k = 1."""
  mesh = parallel.make_mesh()
  configs = [config.copy_and_resolve_references() for _ in range(models)]
  for seed, c in enumerate(configs):
    c.seed = seed
  model = from_config.model(config.model, num_classes)
  kwargs = {**from_config.multi_train_kwargs(configs, num_classes, jax.default_backend()),
            'steps_per_dispatch': per_dispatch}
  step = multi_train.make(model=model, mesh=mesh, **kwargs)
  states = multi_train.stack([state_lib.create(
      model=model, tx=kwargs['unit_tx'], seed=c.seed, image_size=config.data.image_size,
      num_classes=num_classes, mesh=mesh) for c in configs], mesh)
  settings = multi_train.stack([from_config.member_settings(c) for c in configs], mesh)
  calls = max(steps // per_dispatch, 1)
  compile_s, seconds, _ = _timed(step, states, _synthetic(config, num_classes, mesh),
                                 multi_train.train_keys(list(range(models)), mesh), settings,
                                 calls=calls)
  images = calls * per_dispatch * config.train.batch_size * models
  return emit({'what': 'train_models', 'models': models, 'n_feat': config.model.n_feat,
               'batch': config.train.batch_size, 'steps_per_dispatch': per_dispatch,
               'steps': calls * per_dispatch, 'model_img_per_s': images / seconds,
               'img_per_s_each': images / seconds / models,
               'step_ms': 1e3 * seconds / (calls * per_dispatch), 'first_call_s': compile_s,
               'peak_memory_mb': peak_memory_mb()})


def sample_speed(config, sampler: str, steps: int, n: int) -> dict:
  """Sprites/s of the whole sampling loop in one jit (course model, random weights)."""
  mesh = parallel.make_mesh()
  model = from_config.model(config.model, COURSE_CLASSES)
  size = config.data.image_size
  params = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                      jnp.zeros((1,)), jnp.zeros((1, COURSE_CLASSES))),
                   out_shardings=parallel.replicated(mesh))()
  # The loop sample.py runs, without guidance or clipping: the peer has neither.
  config.sample.update(sampler=sampler, steps=steps, guidance=0.0, clip_x0='none', eta=0.0)
  fn = drawing.make_sample_fn(model, from_config.sampling(config), mesh, frames=0)
  n = -(-n // mesh.size) * mesh.size
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0), jnp.arange(n))
  context = jax.nn.one_hot(jnp.arange(n) % COURSE_CLASSES, COURSE_CLASSES)
  start = time.perf_counter()
  jax.block_until_ready(fn(params, keys, context))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(fn(params, keys, context))
  seconds = time.perf_counter() - start
  return emit({'what': 'sample', 'sampler': sampler, 'steps': steps, 'n': n,
               'dtype': config.model.dtype, 'seconds': seconds, 'sprites_per_s': n / seconds,
               'first_call_s': compile_s, 'peak_memory_mb': peak_memory_mb()})


def first_step_speed(root: str, warm: bool) -> dict:
  """Seconds from starting `python launch.py` (smoke preset) until it logs its first train step.

  The launcher keeps its compilation cache in <workdir>/../.jax_cache: the cold run starts
  with an empty one under `root`, the warm run reuses what the cold run wrote.
  """
  name = 'warm' if warm else 'cold'
  cmd = [sys.executable, 'launch.py', '--config=configs/sprites.py:smoke',
         f'--workdir={os.path.join(root, name)}', '--config.train.log_every=1']
  start = time.perf_counter()
  child = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  seconds = None
  for line in child.stderr:
    if seconds is None and ' step 1/' in line:
      seconds = time.perf_counter() - start
      child.kill()
  child.wait()
  if seconds is None:
    raise RuntimeError(f'{" ".join(cmd)} ended (code {child.returncode}) before its first step.')
  return emit({'what': 'first_step', 'preset': 'smoke', 'compile_cache': name, 'seconds': seconds})


def run_peer(path: str, python: str, mode: str) -> list[dict]:
  """The PyTorch peer's JSON lines; mode: its 'small' (--quick), 'train100' or '' (full) run."""
  args = [python, path] + ([mode] if mode else [])
  out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
  lines = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
  for line in lines:
    print(json.dumps({**line, 'impl': 'torch-peer'}), flush=True)
  return lines


def _best(lines, **match):
  rates = [line.get('img_per_s', line.get('sprites_per_s', 0.0)) for line in lines
           if all(line.get(k) == v for k, v in match.items())]
  return max(rates, default=None)


def ratios(ours: list[dict], peer: list[dict]) -> None:
  """This project / peer for each setting both measured, as `ratio` lines."""
  pairs = [
      ('train batch 100 fp32 (course setting)', _best(ours, what='train', batch=100, dtype='float32'),
       _best(peer, what='train', batch=100, amp=False)),
      ('train batch 1000 bf16', _best(ours, what='train', batch=1000, dtype='bfloat16'),
       _best(peer, what='train', batch=1000, amp=True)),
      ('train best of each', _best(ours, what='train', model='course'), _best(peer, what='train')),
      ('sample DDPM-500 fp32', _best(ours, what='sample', sampler='ddpm', dtype='float32'),
       _best(peer, what='sample', sampler='ddpm', amp=False)),
      ('sample DDPM-500 bf16', _best(ours, what='sample', sampler='ddpm', dtype='bfloat16'),
       _best(peer, what='sample', sampler='ddpm', amp=True)),
      ('sample DDIM-25 fp32', _best(ours, what='sample', sampler='ddim', dtype='float32'),
       _best(peer, what='sample', sampler='ddim', amp=False)),
  ]
  for setting, mine, theirs in pairs:
    if mine and theirs:
      emit({'what': 'ratio', 'setting': setting, 'ours': mine, 'torch_peer': theirs,
            'ratio': mine / theirs})


def _train_settings(quick: bool, accelerator: bool, per_dispatch: int):
  """(config, label, steps, num_classes, steps per dispatch) of each training figure."""
  steps = 10 if quick else 300
  course = (_course_config(100, 'float32'), 'course', steps, COURSE_CLASSES)
  out = [course + (per_dispatch,),
         (_course_config(1000, 'bfloat16'), 'course', max(steps // 5, 2), COURSE_CLASSES, per_dispatch)]
  if accelerator and not quick:
    out.insert(1, course + (1,))  # what fusing steps into one dispatch buys at the course's batch
    out += [(_course_config(b, 'bfloat16'), 'course', 100, COURSE_CLASSES, per_dispatch)
            for b in (2000, 4000, 8000)]
  out.append((sprites.get_config(), 'default preset', max(steps // 5, 2), 8, per_dispatch))
  return out


def main(argv):
  del argv
  # The peer runs first, before JAX claims the accelerator's memory, and so whatever cuts
  # our part short, its figures are there.
  unknown = set(_WHAT.value) - {'train', 'sample', 'first_step', 'models', 'train100'}
  if unknown or ('train100' in _WHAT.value and len(_WHAT.value) > 1):
    raise app.UsageError(f'--what={",".join(_WHAT.value)}: pick from train, sample, first_step, '
                         'models, or train100 on its own.')
  only_train100 = _WHAT.value == ['train100']
  mode = 'train100' if only_train100 else 'small' if _QUICK.value else ''
  peer = run_peer(_PEER.value, _PEER_PYTHON.value, mode) if _PEER.value else []
  parallel.configure_cpu_devices(_CPU_DEVICES.value, 100)  # before JAX touches a device
  quick, accelerator = _QUICK.value, jax.default_backend() != 'cpu'
  per_dispatch = _STEPS_PER_DISPATCH.value or (10 if accelerator else 1)
  ours = []
  if only_train100:  # as the peer's mode of that name: 30 steps on CPU, 300 on accelerators
    ours.append(train_speed(_course_config(100, 'float32'), 'course', 300 if accelerator else 30,
                            per_dispatch, COURSE_CLASSES))
  if 'train' in _WHAT.value:
    for config, label, steps, classes, k in _train_settings(quick, accelerator, per_dispatch):
      ours.append(train_speed(config, label, steps, k if steps >= k else 1, classes))
  if 'models' in _WHAT.value:
    for k in map(int, _MODELS.value):
      ours.append(models_speed(sprites.get_config('cpu'), k, 10 if quick else 100, per_dispatch,
                               8))
  if 'sample' in _WHAT.value:
    n = 16 if quick else 1000
    course = _course_config(n, 'float32')
    for sampler, steps in (('ddpm', 500), ('ddim', 25), ('dpmpp_2m', 20)):
      ours.append(sample_speed(course, sampler, steps, n))
    if not quick:
      ours.append(sample_speed(_course_config(n, 'bfloat16'), 'ddpm', 500, n))
  if 'first_step' in _WHAT.value:
    import tempfile  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as root:
      ours += [first_step_speed(root, warm=False), first_step_speed(root, warm=True)]
  if peer:
    ratios(ours, peer)


if __name__ == '__main__':
  app.run(main)
