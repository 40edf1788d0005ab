"""Train a group of sweep runs as one vmapped step; each workdir ends up as train.run leaves it.

The members (workdirs whose configs differ only in from_config.VALUE_KEYS) restore from,
checkpoint to, log to and sample into their own workdirs, so evaluation, the table and a resumed
sweep treat them as ordinary runs. <workdir>/train_time.json adds up the wall time of the
sessions that trained it (shared by the models of one step: `models` says how many).
"""
import json
import os
import time

import jax
import numpy as np
from absl import logging

from experiments import evaluate, from_config, sample
from experiments.data import dataset
from experiments.runtime import checkpoints, files, logs, multi_train, parallel
from experiments.runtime import state as state_lib

TIME_FILE = 'train_time.json'


def _prepare(configs, workdirs):
  """Checks, config.json and data.json in every workdir; the training split."""
  for config in configs:
    from_config.validate(config)
    evaluate.check_config(config.eval)
  data = dataset.load(configs[0].data, 'train')
  if files.is_writer():
    for config, workdir in zip(configs, workdirs):
      files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
      files.write_json(os.path.join(workdir, 'data.json'), dataset.record(data))
  return data


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


def _check_finite(losses, step: int, workdirs, mngrs) -> None:
  for loss, workdir, mngr in zip(losses, workdirs, mngrs):
    if not np.isfinite(loss):
      raise FloatingPointError(
          f'Loss is {loss} at step {step} in {workdir}: training diverged. Its last good '
          f'checkpoint (step {mngr.latest_step()}) is kept; lower its learning rate, or set '
          'train.grad_clip, and run the sweep again to resume.')


def _crossed(before: int, after: int, every: int) -> bool:
  return every > 0 and after // every > before // every


def train_group(configs, workdirs) -> list:
  """Train every member to train.steps from where its checkpoints stand (all at one step), then
  draw each one's sample grid and, with eval.at_end, evaluate it; returns the final states."""
  data = _prepare(configs, workdirs)
  mesh = parallel.make_mesh()
  parallel.check_batch(configs[0].train.batch_size, mesh, 'train.batch_size')
  kwargs = [from_config.state_kwargs(c, data.num_classes) for c in configs]
  mngrs = [checkpoints.manager(w, c.train.keep_checkpoints,
                               keep_steps=from_config.guide_steps(c, jax.default_backend()))
           for c, w in zip(configs, workdirs)]
  states = [state_lib.create_or_restore(mesh=mesh, mngr=m, **k) for m, k in zip(mngrs, kwargs)]
  if len({int(s.step) for s in states}) > 1:
    raise ValueError(f'{workdirs}: members stand at different steps; train them apart.')
  logging.info('Training %d model(s) in one step from step %d: %s', len(configs),
               int(states[0].step), ', '.join(workdirs))
  states = _loop(configs, workdirs, states, data, kwargs[0]['model'], mngrs, mesh)
  for config, workdir, state in zip(configs, workdirs, states):
    params = state.ema_params if config.sample.use_ema else state.params
    sample.run(config, workdir, params=params, step=int(state.step), class_names=data.class_names)
    if config.eval.at_end:
      evaluate.run(config, workdir, step=int(state.step), params=params)
  return states


def _loop(configs, workdirs, states, data, model, mngrs, mesh) -> list:
  kwargs = from_config.multi_train_kwargs(configs, data.num_classes, jax.default_backend())
  step_fn = multi_train.make(model=model, mesh=mesh, **kwargs)
  per_dispatch, cfg, k = kwargs['steps_per_dispatch'], configs[0].train, len(configs)
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  keys = multi_train.train_keys([c.seed for c in configs], mesh)
  settings = multi_train.stack([from_config.member_settings(c) for c in configs], mesh)
  stacked, step = multi_train.stack(states, mesh), int(states[0].step)
  writers, clock = [logs.Writer(w) for w in workdirs], _Clock(workdirs)
  progress = logs.Progress(step, cfg.steps, cfg.batch_size * k)  # img/s of all k models
  while step < cfg.steps:
    stacked, metrics = step_fn(stacked, images, labels, keys, settings)
    before, step = step, step + per_dispatch
    done = step >= cfg.steps
    log, save = (_crossed(before, step, n) or done for n in (cfg.log_every, cfg.ckpt_every))
    save = save or any(before < c.sample.guide_step <= step for c in configs)  # guides
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
    if not done and any(_crossed(before, step, n) for n in (cfg.sample_every, cfg.eval_every)):
      _on_the_way(configs, workdirs, multi_train.unstack(stacked, mesh), before, step, data)
  for writer in writers:
    writer.close()
  return multi_train.unstack(stacked, mesh)


def _on_the_way(configs, workdirs, states, before: int, step: int, data) -> None:
  """train.sample_every / eval_every, for every member (EMA weights, as train.py)."""
  for config, workdir, state in zip(configs, workdirs, states):
    if _crossed(before, step, config.train.sample_every):
      sample.run(config, workdir, params=state.ema_params, step=step, class_names=data.class_names)
    if _crossed(before, step, config.train.eval_every):
      evaluate.run(config, workdir, params=state.ema_params, step=step)
