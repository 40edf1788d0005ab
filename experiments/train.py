"""--mode=train: train, checkpoint, resume, and finish by sampling."""
import os

import jax
import numpy as np
from absl import logging

from experiments import evaluate, from_config, sample
from experiments.data import dataset
from experiments.runtime import checkpoints, files, logs, parallel, state as state_lib, train_step


def _check_finite(metrics: dict, step: int, mngr) -> None:
  loss = float(metrics['loss'])
  if not np.isfinite(loss):
    raise FloatingPointError(
        f'Loss is {loss} at step {step}: training diverged. The last good checkpoint '
        f'(step {mngr.latest_step()}) in {mngr.directory} is kept; lower train.learning_rate '
        'or set train.grad_clip, then run again to resume from it.')


def _crossed(before: int, after: int, every: int) -> bool:
  return every > 0 and after // every > before // every


def run(config, workdir: str):
  from_config.validate(config)
  evaluate.check_config(config.eval)
  if files.is_writer():
    files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  data = dataset.load(config.data, 'train')
  if files.is_writer():
    files.write_json(os.path.join(workdir, 'data.json'),
                     {'class_names': list(data.class_names), 'train_size': len(data.images)})
  mesh = parallel.make_mesh()
  parallel.check_batch(config.train.batch_size, mesh, 'train.batch_size')
  kwargs = from_config.state_kwargs(config, data.num_classes)
  mngr = checkpoints.manager(workdir, config.train.keep_checkpoints)
  state = state_lib.create_or_restore(mesh=mesh, mngr=mngr, **kwargs)
  if int(state.step):
    logging.info('Resuming from step %d in %s', int(state.step), mngr.directory)
  logging.info('%s: %d parameters, %d training sprites, %d classes, %d devices',
               config.model.name, state_lib.num_params(state.params), len(data.images),
               data.num_classes, mesh.size)
  state = _train_loop(config, workdir, state, data, kwargs['model'], kwargs['tx'], mngr, mesh)
  params = state.ema_params if config.sample.use_ema else state.params
  sample.run(config, workdir, params=params, step=int(state.step), class_names=data.class_names)
  if config.eval.at_end:
    evaluate.run(config, workdir, step=int(state.step), params=params)
  return state


def _train_loop(config, workdir, state, data, model, tx, mngr, mesh):
  kwargs = from_config.train_step_kwargs(config, data.num_classes, jax.default_backend())
  step_fn = train_step.make(model=model, tx=tx, mesh=mesh, **kwargs)
  per_dispatch, train_cfg = kwargs['steps_per_dispatch'], config.train
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  key = state_lib.train_key(config.seed)
  step, total = int(state.step), train_cfg.steps
  writer, progress = logs.Writer(workdir), logs.Progress(step, total, train_cfg.batch_size)
  while step < total:
    state, metrics = step_fn(state, images, labels, key)
    before, step = step, step + per_dispatch
    done = step >= total
    log, save = (_crossed(before, step, n) or done for n in (train_cfg.log_every, train_cfg.ckpt_every))
    if log or save:
      metrics = jax.device_get(metrics)
      _check_finite(metrics, step, mngr)
      if log:
        writer.scalars(step, {**metrics, **progress.update(step, float(metrics['loss']))})
      if save:
        checkpoints.save(mngr, step, state)
    if _crossed(before, step, train_cfg.sample_every) and not done:
      sample.run(config, workdir, params=state.ema_params, step=step,
                 class_names=data.class_names)
    if _crossed(before, step, train_cfg.eval_every) and not done:
      evaluate.run(config, workdir, params=state.ema_params, step=step)
  writer.close()
  return state
