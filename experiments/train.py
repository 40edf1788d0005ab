"""--mode=train: train, checkpoint, resume, and finish by sampling.

Everything that can be checked is checked before the first step: the config, the data (the classes
of sample.mix, a test split if an evaluation will need one) and the workdir (one run at a time,
checkpoints of this model and these classes, not past train.steps). config.json and data.json are
written only then. SIGTERM or SIGINT saves a checkpoint at the current step and ends the run
normally; running the same command again resumes it.
"""
import math
import os
import shlex
import sys

import jax
import numpy as np
from absl import logging

from experiments import evaluate, from_config, sample
from experiments.data import dataset
from experiments.runtime import checkpoints, drawing, files, logs, parallel, preemption, refiner
from experiments.runtime import state as state_lib, train_step, trained_with, workdir_lock


def _check_finite(metrics: dict, step: int, mngr) -> None:
  loss = float(metrics['loss'])
  if not np.isfinite(loss):
    last = mngr.latest_step()
    kept = (f'The last good checkpoint (step {last}) in {mngr.directory} is kept' if last is not None
            else 'No checkpoint was saved yet, so the next run starts again from step 0')
    raise FloatingPointError(
        f'Loss is {loss} at step {step}: training diverged. {kept}; lower train.learning_rate '
        'and run again (train.grad_clip changes the optimizer state: in a new --workdir).')


def crossed(before: int, after: int, every: int) -> bool:
  """Whether a dispatch from step `before` to `after` passed a multiple of `every` (0: never)."""
  return every > 0 and after // every > before // every


def landing_dispatch(per_dispatch: int, steps_left: int) -> int:
  """Steps per dispatch for a run resumed where another dispatch size left it: it must still land
  on train.steps exactly."""
  return math.gcd(per_dispatch, steps_left) or 1


def run(config, workdir: str):
  from_config.validate(config)
  evaluate.check_config(config.eval)
  with workdir_lock.hold(workdir):
    data, mesh, kwargs, mngr, state = _prepare(config, workdir)
    with preemption.StopOnSignal() as stop:
      state = _train_loop(config, workdir, state, data, kwargs['model'], kwargs['tx'], mngr, mesh,
                          stop)
    if stop.received:
      _say_how_to_resume(stop.received, int(state.step), mngr)
      return state
    params = state.ema_params if config.sample.use_ema else state.params
    fine_tune_refiner(config, workdir, params, int(state.step), data, mesh)
    sample.run(config, workdir, params=params, step=int(state.step), class_names=data.class_names)
    if config.eval.at_end:
      evaluate.run(config, workdir, step=int(state.step), params=params)
  return state


def _prepare(config, workdir: str):
  """(data, mesh, state kwargs, checkpoint manager, state): every check, then the records."""
  data = dataset.load(config.data, 'train')
  from_config.cap_steps(config, len(data.images))
  check_data(config, data)
  mesh = parallel.make_mesh()
  parallel.check_batch(config.train.batch_size, mesh, 'train.batch_size')
  kwargs = from_config.state_kwargs(config, data.num_classes)
  mngr = manager(config, workdir)
  check_workdir(config, workdir, data, mngr)
  state = state_lib.create_or_restore(mesh=mesh, mngr=mngr, set_aside=True, **kwargs)
  if int(state.step):
    logging.info('Resuming from step %d in %s', int(state.step), mngr.directory)
  check_guide_kept(config, int(state.step), mngr)
  record(config, workdir, data)
  logging.info('%s: %d parameters, %d training sprites, %d classes, %d devices',
               config.model.name, state_lib.num_params(state.params), len(data.images),
               data.num_classes, mesh.size)
  return data, mesh, kwargs, mngr, state


def fine_tune_refiner(config, workdir: str, params, step: int, data, mesh) -> None:
  """The refiner of the weights that draw (runtime/refiner.py), unless train.refiner_steps is 0
  or the workdir holds it already."""
  want = from_config.refiner_settings(config.train)
  if not want['steps'] or refiner.held(workdir, step, want, params):
    return
  kwargs = from_config.train_step_kwargs(config, data.num_classes, jax.default_backend())
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  refiner.fine_tune(want=want, params=params, step=step, workdir=workdir, images=images,
                    labels=labels, mesh=mesh, seed=config.seed, logsnr_fn=kwargs['logsnr_fn'],
                    step_kwargs={**kwargs, 'model': from_config.model(config.model,
                                                                      data.num_classes)},
                    adam_b2=config.train.adam_beta2, grad_clip=config.train.grad_clip)


def finish_refiner(config, workdir: str) -> None:
  """The refiner of a run trained to its end without one (stopped while fine-tuning it, or
  trained before refiners), from its latest checkpoint; nothing if it has one or needs none."""
  if not config.train.refiner_steps:
    return
  with workdir_lock.hold(workdir):
    trained_with.check(config, workdir, trained_with.TRAINING, 'fine-tuning its refiner')
    data = dataset.load(config.data, 'train')
    mesh = parallel.make_mesh()
    step, params = drawing.restore_params(workdir, mesh, config.sample.use_ema,
                                          **from_config.state_kwargs(config, data.num_classes))
    fine_tune_refiner(config, workdir, params, step, data, mesh)


def manager(config, workdir: str):
  """The training checkpoint manager: keep_checkpoints, keep_every and the autoguidance guide."""
  return checkpoints.manager(workdir, config.train.keep_checkpoints, config.train.keep_every,
                             keep_steps=from_config.guide_steps(config, jax.default_backend()))


def check_data(config, data) -> None:
  """What the data must offer this config: the classes of sample.mix, and a test split if an
  evaluation will need one (before hours of training, not after)."""
  drawing.contexts(data.class_names, config.sample.per_class, config.sample.mix)
  if config.eval.at_end or config.train.eval_every:
    heldout = dataset.load(config.data, 'test')  # no test split: says why, and what to do
    evaluate.check_reference(config, data if config.eval.reference == 'train' else heldout)


def check_workdir(config, workdir: str, data, mngr) -> None:
  """A workdir with checkpoints was trained on these classes and sprites, not past train.steps
  (config.train.steps already capped by train.max_epochs)."""
  latest = mngr.latest_step()
  _check_recorded_classes(workdir, data.class_names, latest is not None)
  if latest is not None:
    dataset.check_trained_on(workdir, data, 'resuming would train on other sprites')
    trained_with.check(config, workdir, trained_with.TRAINING, 'resuming')
  if latest is not None and latest > config.train.steps:
    cap = (f' (and train.max_epochs={config.train.max_epochs:g}, which may end it sooner; 0: no '
           'cap)' if config.train.max_epochs > 0 else '')
    raise ValueError(
        f'{mngr.directory} holds a checkpoint at step {latest}, past train.steps='
        f'{config.train.steps}: raise --config.train.steps{cap} to train on, use --mode=sample or '
        '--mode=eval to use it as it is, or pass another --workdir.')
  if config.train.refiner_steps:  # its refiner would otherwise be found different at the end
    refiner.check_same(workdir, config.train.steps, from_config.refiner_settings(config.train))


def record(config, workdir: str, data) -> None:
  """config.json and data.json (what trained the workdir), once every check has passed."""
  if files.is_writer():
    files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    files.write_json(os.path.join(workdir, 'data.json'), dataset.record(data))


def check_guide_kept(config, step: int, mngr) -> None:
  """A run resumed past its autoguidance guide step must hold that checkpoint (a workdir trained
  before the guide was set would only fail when drawing, after the training)."""
  guide, kept = from_config.guide_steps(config, jax.default_backend()), mngr.all_steps()
  if not config.sample.autoguidance or not guide or step < guide[0] or guide[0] in kept:
    return
  raise ValueError(
      f'{mngr.directory} is at step {step}, past sample.guide_step={guide[0]}, but holds no '
      f'checkpoint of that step to guide with (it holds {", ".join(map(str, kept))}): '
      'set sample.guide_step to one of those, or sample.autoguidance=0, or use another --workdir. '
      'Nothing in the workdir was changed.')


def _check_recorded_classes(workdir: str, class_names, trained: bool) -> None:
  """A workdir with checkpoints keeps the classes its data.json records (labels index them)."""
  path = os.path.join(workdir, 'data.json')
  if not trained:
    return
  recorded = files.read_record(path).get('class_names')
  if recorded is not None and list(recorded) != list(class_names):
    raise ValueError(
        f'{workdir} was trained on classes {", ".join(recorded) or "(none)"} ({path}), but this '
        f'config\'s data has {", ".join(class_names) or "(none)"}: use the data.* settings that '
        'trained it, or another --workdir. Nothing in the workdir was changed.')


def _say_how_to_resume(signal_name: str, step: int, mngr) -> None:
  python = os.path.relpath(sys.executable)  # .venv/bin/python as typed, not a bare `python`
  python = sys.executable if python.startswith('..') else python
  command = (shlex.join([python, *sys.argv]) if sys.argv and sys.argv[0].endswith('launch.py')
             else 'the same command')
  logging.warning('Stopped by %s at step %d; the checkpoint of step %d is saved in %s. To resume, '
                  'run %s again.', signal_name, step, step, mngr.directory, command)


def _train_loop(config, workdir, state, data, model, tx, mngr, mesh, stop):
  kwargs = from_config.train_step_kwargs(config, data.num_classes, jax.default_backend())
  step, total = int(state.step), config.train.steps
  kwargs['steps_per_dispatch'] = landing_dispatch(kwargs['steps_per_dispatch'], total - step)
  step_fn = train_step.make(model=model, tx=tx, mesh=mesh, **kwargs)
  per_dispatch, train_cfg = kwargs['steps_per_dispatch'], config.train
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  key = state_lib.train_key(config.seed)
  writer = logs.Writer(workdir, first_step=step)
  progress = logs.Progress(step, total, train_cfg.batch_size)
  window = parallel.Window()
  while step < total:
    state, metrics = step_fn(state, images, labels, key)
    window.add(metrics)
    before, step = step, step + per_dispatch
    done, stopping = step >= total, stop.requested()
    draw, judge = (crossed(before, step, n) and not done
                   for n in (train_cfg.sample_every, train_cfg.eval_every))
    log, save = (crossed(before, step, n) or done for n in (train_cfg.log_every, train_cfg.ckpt_every))
    save = save or before < config.sample.guide_step <= step  # autoguidance's guide
    save = save or draw or judge  # a signal during minutes of drawing then loses no steps
    if log or save or stopping:
      metrics = jax.device_get(metrics)
      _check_finite(metrics, step, mngr)
      if log:
        writer.scalars(step, {**metrics, **progress.update(step, float(metrics['loss']))})
      if save or stopping:
        checkpoints.save(mngr, step, state)
    if stopping:
      break
    params = state.ema_params if config.sample.use_ema else state.params  # as at the end
    if draw:
      sample.run(config, workdir, params=params, step=step, class_names=data.class_names)
    if judge:
      evaluate.run(config, workdir, params=params, step=step)
  writer.close()
  return state
