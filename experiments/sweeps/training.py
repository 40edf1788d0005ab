"""Train a group of sweep runs as one vmapped step; each workdir ends up as train.run leaves it.

The members (workdirs whose configs differ only in from_config.VALUE_KEYS) restore from,
checkpoint to, log to and sample into their own workdirs, so evaluation, the table and a resumed
sweep treat them as ordinary runs. <workdir>/train_time.json adds up the wall time of the
sessions that trained it (shared by the models of one step: `models` says how many).
"""
import contextlib
import json
import os
import time

import jax
import numpy as np
from absl import logging

from experiments import evaluate, from_config, sample, train
from experiments.data import dataset
from experiments.runtime import checkpoints, files, hosts, logs, multi_train, parallel
from experiments.runtime import preemption
from experiments.runtime import state as state_lib, workdir_lock

TIME_FILE = 'train_time.json'
DIVERGED = 'diverged.json'  # written where a member's training diverged


def recorded_seconds(workdir: str) -> float:
  path = os.path.join(workdir, TIME_FILE)
  if not os.path.exists(path):
    return 0.0
  with open(path, encoding='utf-8') as f:
    return json.load(f)['seconds']


class _Clock:
  """Each member's training wall time: what earlier sessions recorded plus this session's."""

  def __init__(self, workdirs):
    self.workdirs, self.start = workdirs, time.perf_counter()
    self.before = [recorded_seconds(w) for w in workdirs]

  def record(self, step: int) -> None:
    if not files.is_writer():
      return
    spent = time.perf_counter() - self.start
    for workdir, before in zip(self.workdirs, self.before):
      files.write_json(os.path.join(workdir, TIME_FILE),
                       {'seconds': before + spent, 'step': step, 'models': len(self.workdirs)})


def diverged_at(workdir: str) -> int | None:
  """The step at which the workdir's training diverged in a sweep (its DIVERGED file), or None."""
  return files.read_json(os.path.join(workdir, DIVERGED)).get('step')


class Diverged(FloatingPointError):
  """Some members' loss went non-finite; each has a DIVERGED file, and the sweep goes on without
  them (with exact resume they would diverge again at the same step)."""

  def __init__(self, workdirs: list):
    super().__init__(f'Training diverged in {", ".join(workdirs)}.')
    self.workdirs = workdirs


def _check_finite(losses, step: int, workdirs, mngrs) -> None:
  bad = [(w, m, float(loss)) for loss, w, m in zip(losses, workdirs, mngrs)
         if not np.isfinite(loss)]
  for workdir, mngr, loss in bad:
    message = (f'Loss is {loss} at step {step} in {workdir}: training diverged. Its last good '
               f'checkpoint (step {mngr.latest_step()}) is kept; the sweep goes on without it (its '
               'row counts it as diverged). Resumed as it is, it diverges at the same step '
               'again: add a point with a lower learning rate or train.grad_clip instead, or '
               f'delete {os.path.join(workdir, DIVERGED)} to retry it anyway.')
    logging.error('%s', message)
    if files.is_writer():
      files.write_json(os.path.join(workdir, DIVERGED), {'step': step, 'loss': loss,
                                                         'message': message})
  if bad:
    hosts.barrier('divergence recorded')  # every process then sees the files
    raise Diverged([w for w, _, _ in bad])


class Stopped(Exception):
  """SIGTERM or SIGINT stopped the sweep; every member saved its checkpoint at `step`."""

  def __init__(self, signal_name: str, step: int):
    super().__init__(f'Stopped by {signal_name} at step {step}; every model of the group saved '
                     'its checkpoint there. Run the same sweep command again to resume.')


def train_group(configs, workdirs) -> list | None:
  """Train every member to train.steps from where its checkpoints stand (all at one step), then
  draw each one's sample grid and, with eval.at_end, evaluate it; returns the final states, or
  None when restoring set a damaged checkpoint aside and the members no longer stand at one step
  (group them again). Each workdir gets train.run's checks and lock first; raises Stopped."""
  for config, workdir in zip(configs, workdirs):
    from_config.validate(config)
    evaluate.check_config(config.eval)
    dataset.check_outputs_outside(config.data, workdir)
  with contextlib.ExitStack() as held:
    for workdir in sorted(set(workdirs)):
      held.enter_context(workdir_lock.hold(workdir))
    data = dataset.load(configs[0].data, 'train')
    mesh = parallel.make_mesh()
    parallel.check_batch(configs[0].train.batch_size, mesh, 'train.batch_size')
    mngrs = [train.manager(c, w) for c, w in zip(configs, workdirs)]
    for config, workdir, mngr in zip(configs, workdirs, mngrs):
      train.check_data(config, data)
      train.check_workdir(config, workdir, data, mngr)
    kwargs = [from_config.state_kwargs(c, data.num_classes) for c in configs]
    states = [state_lib.create_or_restore(mesh=mesh, mngr=m, set_aside=True, **k)
              for m, k in zip(mngrs, kwargs)]
    if len({int(s.step) for s in states}) > 1:
      logging.warning('%s: a damaged checkpoint was set aside, so the members now stand at steps '
                      '%s; grouping them again.', ', '.join(workdirs),
                      ', '.join(str(int(s.step)) for s in states))
      return None
    for config, mngr, state in zip(configs, mngrs, states):
      train.check_guide_kept(config, int(state.step), mngr)
    for config, workdir in zip(configs, workdirs):  # every check passed: the records
      train.record(config, workdir, data)
    logging.info('Training %d model(s) in one step from step %d: %s', len(configs),
                 int(states[0].step), ', '.join(workdirs))
    with preemption.StopOnSignal() as stop:
      states = _loop(configs, workdirs, states, data, kwargs[0]['model'], mngrs, mesh, stop)
    if stop.received and int(states[0].step) < configs[0].train.steps:
      raise Stopped(stop.received, int(states[0].step))
    for config, workdir, state in zip(configs, workdirs, states):
      params = state.ema_params if config.sample.use_ema else state.params
      train.fine_tune_refiner(config, workdir, params, int(state.step), data, mesh)
      sample.run(config, workdir, params=params, step=int(state.step),
                 class_names=data.class_names)
      if config.eval.at_end:
        evaluate.run(config, workdir, step=int(state.step), params=params)
  return states


def _loop(configs, workdirs, states, data, model, mngrs, mesh, stop) -> list:
  kwargs = from_config.multi_train_kwargs(configs, data.num_classes, jax.default_backend())
  cfg, k, step = configs[0].train, len(configs), int(states[0].step)
  kwargs['steps_per_dispatch'] = train.landing_dispatch(kwargs['steps_per_dispatch'],
                                                       cfg.steps - step)
  step_fn = multi_train.make(model=model, mesh=mesh, **kwargs)
  per_dispatch = kwargs['steps_per_dispatch']
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  keys = multi_train.train_keys([c.seed for c in configs], mesh)
  settings = multi_train.stack([from_config.member_settings(c) for c in configs], mesh)
  stacked, clock = multi_train.stack(states, mesh), _Clock(workdirs)
  progress = logs.Progress(step, cfg.steps, cfg.batch_size * k)  # img/s of all k models
  with contextlib.ExitStack() as closing:  # the logs closed however the loop ends
    writers = [closing.enter_context(contextlib.closing(logs.Writer(w, first_step=step)))
               for w in workdirs]
    window = parallel.Window()
    while step < cfg.steps:
      stacked, metrics = step_fn(stacked, images, labels, keys, settings)
      window.add(metrics)
      before, step = step, step + per_dispatch
      done, stopping = step >= cfg.steps, stop.requested()
      draw = not done and any(train.crossed(before, step, n) for c in configs
                              for n in (c.train.sample_every, c.train.eval_every))
      log, save = (train.crossed(before, step, n) or done for n in (cfg.log_every, cfg.ckpt_every))
      save = save or any(before < c.sample.guide_step <= step for c in configs)  # guides
      save = save or draw or stopping  # a signal during minutes of drawing then loses no steps
      if log or save:
        metrics = jax.device_get(metrics)
        _check_finite(metrics['loss'], step, workdirs, mngrs)
      if log:
        rate = progress.update(step, float(np.mean(metrics['loss'])))['img_per_s']
        for i, writer in enumerate(writers):
          writer.scalars(step, {'loss': metrics['loss'][i], 'grad_norm': metrics['grad_norm'][i],
                                'img_per_s': rate / k, 'models': k})
      if save:
        for mngr, state in zip(mngrs, multi_train.unstack(stacked, mesh)):
          checkpoints.save(mngr, step, state)
        clock.record(step)
      if stopping:
        break
      if draw:
        _on_the_way(configs, workdirs, multi_train.unstack(stacked, mesh), before, step, data)
  return multi_train.unstack(stacked, mesh)


def _on_the_way(configs, workdirs, states, before: int, step: int, data) -> None:
  """train.sample_every / eval_every, for every member (the weights sample.use_ema names)."""
  for config, workdir, state in zip(configs, workdirs, states):
    params = state.ema_params if config.sample.use_ema else state.params
    if train.crossed(before, step, config.train.sample_every):
      sample.run(config, workdir, params=params, step=step, class_names=data.class_names)
    if train.crossed(before, step, config.train.eval_every):
      evaluate.run(config, workdir, params=params, step=step)
