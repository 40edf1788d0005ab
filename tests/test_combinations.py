"""Every schedule x prediction target trains, and samples with every sampler, without NaN.

Tiny on purpose, on the default (emoji) data with the smoke preset's model at 8 channels:
one train step per schedule x target, then 3 steps of every sampler from those weights.
The loss runs eagerly around a model compiled once, and each sampler is compiled once per
target: a schedule reaches it only as its (t, logSNR) grid, passed as data.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from conftest import tiny_config
from diffusion import denoiser, gaussian, losses, samplers, schedules
from experiments import from_config
from experiments.data import dataset

STEPS = 3


def _configs(data_dir):
  combos = [(s, p, False) for s in sorted(schedules.SCHEDULES) for p in gaussian.PREDICTIONS]
  combos += [(s, p, True) for s in ('linear', 'cosine') for p in ('v', 'x0', 'edm')]  # not eps
  for schedule, prediction, ztsnr in combos:
    config = tiny_config(data_dir)
    config.diffusion.update(schedule=schedule, prediction=prediction, zero_terminal_snr=ztsnr,
                            timesteps=1000, cond_drop_rate=0.5)
    from_config.validate(config)
    yield f'{schedule}/{prediction}' + ('/zero-terminal-snr' if ztsnr else ''), config


def _train_step(params, tx, opt_state, apply, batch, config, key):
  x0, context = batch
  k_t, k_eps = jax.random.split(key)
  t = jax.random.randint(k_t, (len(x0),), 1, 1001) / 1000.0
  eps = jax.random.normal(k_eps, x0.shape)

  def loss_fn(p):
    return jnp.mean(losses.diffusion_loss(
        model_fn=lambda x, t_, logsnr, c: apply(p, x, t_, c), x0=x0, t=t, eps=eps, context=context,
        logsnr_fn=from_config.logsnr_fn(config.diffusion), **from_config.loss_kwargs(config.diffusion)))
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, _ = tx.update(grads, opt_state, params)
  return float(loss), jax.tree.map(lambda p, u: p + u, params, updates)


@functools.lru_cache(maxsize=None)
def _sampler(apply, sampler: str, prediction: str, num_classes: int):
  def run(params, keys, context, ts, logsnrs):
    denoise = denoiser.make_denoiser(model_fn=lambda x, t, logsnr, c: apply(params, x, t, c),
                                     context=context, prediction=prediction, guidance=1.0)
    return samplers.sample(denoise=denoise, grid=(ts, logsnrs), keys=keys, shape=(16, 16, 3),
                           sampler=sampler, eta=1.0)
  return jax.jit(run)


def test_every_schedule_target_and_sampler_runs_without_nan(data_dir):
  data = dataset.load(tiny_config(data_dir).data, 'train')
  k = data.num_classes
  batch = (jnp.asarray(dataset.to_model(data.images[:16])),
           jnp.asarray(dataset.context(data.labels[:16], k)))
  model = from_config.model(tiny_config(data_dir).model, k)
  apply = jax.jit(model.apply)
  init = jax.jit(model.init)(jax.random.key(0), batch[0][:1], jnp.zeros((1,)), batch[1][:1])
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0), jnp.arange(k))
  failures = []
  for name, config in _configs(data_dir):
    tx = from_config.optimizer(config.train)
    loss, params = _train_step(init, tx, tx.init(init), apply, batch, config, jax.random.key(1))
    if not np.isfinite(loss):
      failures.append(f'{name}: training loss {loss}')
    ts, logsnrs = samplers.time_grid(from_config.logsnr_fn(config.diffusion), STEPS)
    for sampler in sorted(samplers.SAMPLERS):
      fn = _sampler(apply, sampler, config.diffusion.prediction, k)
      x = fn(params, keys, jnp.eye(k), ts, logsnrs)
      if not np.all(np.isfinite(np.asarray(x))):
        failures.append(f'{name}: sampler {sampler} gave non-finite sprites')
  assert not failures, '\n'.join(failures)
