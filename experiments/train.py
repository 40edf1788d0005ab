"""--mode=train: train, checkpoint, resume, and finish by sampling."""
import functools
import json
import os

import jax
import numpy as np
from absl import logging

from experiments import evaluate, from_config, sample
from experiments.data import dataset
from experiments.runtime import checkpoints, logs, parallel, state as state_lib, train_step


def write_json(path: str, value) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _initial_state(config, model, tx, num_classes: int, mngr, mesh):
  """The latest checkpoint in the workdir, or fresh parameters (created already replicated)."""
  init = functools.partial(state_lib.init, model, tx, jax.random.fold_in(jax.random.key(config.seed), 0),
                           config.data.image_size, num_classes)
  rep = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                          jax.eval_shape(init))
  state = checkpoints.restore_latest(mngr, abstract)
  if state is not None:
    logging.info('Resuming from step %d in %s', int(state.step), mngr.directory)
    return state
  return jax.jit(init, out_shardings=rep)()


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
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  data = dataset.load(config.data, 'train')
  write_json(os.path.join(workdir, 'data.json'),
             {'class_names': list(data.class_names), 'train_size': len(data.images)})
  mesh = parallel.make_mesh()
  parallel.check_batch(config.train.batch_size, mesh, 'train.batch_size')
  model = from_config.model(config.model, data.num_classes)
  tx = state_lib.optimizer(config.train)
  mngr = checkpoints.manager(workdir, config.train.keep_checkpoints)
  state = _initial_state(config, model, tx, data.num_classes, mngr, mesh)
  logging.info('%s: %d parameters, %d training sprites, %d classes, %d devices',
               config.model.name, state_lib.num_params(state.params), len(data.images),
               data.num_classes, mesh.size)
  state = _train_loop(config, workdir, state, data, model, tx, mngr, mesh)
  sample.run(config, workdir, params=state.ema_params if config.sample.use_ema else state.params,
             step=int(state.step), class_names=data.class_names)
  if config.eval.at_end:
    evaluate.run(config, workdir, step=int(state.step),
                 params=state.ema_params if config.sample.use_ema else state.params)
  return state


def _train_loop(config, workdir, state, data, model, tx, mngr, mesh):
  t, d = config.train, config.diffusion
  per_dispatch = from_config.steps_per_dispatch(t, jax.default_backend())
  train = train_step.make(
      model=model, tx=tx, logsnr_fn=from_config.logsnr_fn(d), loss_kwargs=from_config.loss_kwargs(d),
      timesteps=d.timesteps, batch_size=t.batch_size, num_classes=data.num_classes,
      cond_drop_rate=d.cond_drop_rate, ema_halflife_kimg=t.ema_halflife_kimg,
      ema_rampup=t.ema_rampup, steps_per_dispatch=per_dispatch, mesh=mesh)
  images, labels = parallel.put_replicated((data.images, data.labels), mesh)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  step = int(state.step)
  writer, progress = logs.Writer(workdir), logs.Progress(step, t.steps, t.batch_size)
  while step < t.steps:
    state, metrics = train(state, images, labels, key)
    before, step = step, step + per_dispatch
    done = step >= t.steps
    if _crossed(before, step, t.log_every) or _crossed(before, step, t.ckpt_every) or done:
      metrics = jax.device_get(metrics)
      _check_finite(metrics, step, mngr)
      if _crossed(before, step, t.log_every) or done:
        writer.scalars(step, {**metrics, **progress.update(step, float(metrics['loss']))})
      if _crossed(before, step, t.ckpt_every) or done:
        checkpoints.save(mngr, step, state)
    if t.sample_every and _crossed(before, step, t.sample_every) and not done:
      sample.run(config, workdir, params=state.ema_params, step=step,
                 class_names=data.class_names)
    if t.eval_every and _crossed(before, step, t.eval_every) and not done:
      evaluate.run(config, workdir, params=state.ema_params, step=step)
  writer.close()
  return state
