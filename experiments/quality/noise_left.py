"""How much noise the network leaves: held-out sprites noised to a few logSNR levels, each
denoised in one network call and compared with the clean sprites.

Where samples are grainy this says whether the network's x0_hat of *real* sprites already is:
a sampler's last step jumps to x0_hat from a nearly clean level, so noise the network cannot
tell from detail there stays in every sample. Per level, as JSON lines:
  noise_left  mean |x0_hat - x0|^2 over the input's noise in x0 space, sigma^2 / alpha^2 =
              exp(-logsnr): 0 for a perfect denoiser, about 1 for one that returns its input
  grain       quality/grain.py of the x0_hat sprites (the clean sprites' own: the first line)
and the same two for the do-nothing denoiser, x_t / alpha clipped to the data range (input_*).
The network is the plain conditional one (EMA weights if sample.use_ema), without guidance.

  python -m experiments.quality.noise_left --config=configs/sprites.py --workdir=runs/sprites-cpu
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from diffusion import denoiser, gaussian, models, samplers, schedules
from experiments import from_config
from experiments.data import dataset
from experiments.quality import grain
from experiments.runtime import drawing, errors, logs, parallel

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:preset] of the run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run (its latest checkpoint).')
_LOGSNR = flags.DEFINE_list('logsnr', ['-2', '0', '2', '4', '5', '6', '8'], 'Levels to noise to.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise.')


def measure(denoise, x0: jax.Array, logsnr_fn, levels, key: jax.Array) -> list[dict]:
  """One record per logSNR level: noise_left and grain of x0_hat = denoise(x_t) for sprites x0
  [N, H, W, C] in [-1, 1] noised to that level, and of the do-nothing clip(x_t / alpha)."""
  n, records = x0.shape[0], []
  for i, level in enumerate(levels):
    logsnr = jnp.full((n,), level, jnp.float32)
    t = jnp.full((n,), samplers.time_at(logsnr_fn, level), jnp.float32)
    x_t = gaussian.diffuse(x0=x0, eps=jax.random.normal(jax.random.fold_in(key, i), x0.shape),
                           logsnr=logsnr)
    alpha, _ = schedules.alpha_sigma(logsnr[0])
    record = {'logsnr': float(level)}
    for name, x0_hat in (('', denoise(x_t, t, logsnr)[0]),
                         ('input_', jnp.clip(x_t / alpha, -1.0, 1.0))):
      record[name + 'noise_left'] = float(jnp.mean(jnp.square(x0_hat - x0))) / math.exp(-level)
      record[name + 'grain'] = grain.grain(dataset.to_uint8(np.asarray(x0_hat)))
    records.append(record)
  return records


def main(argv):
  del argv
  logs.quiet_libraries()
  with errors.reported():
    config, workdir = _CONFIG.value, _WORKDIR.value
    levels = [float(v) for v in _LOGSNR.value]
    test = dataset.load(config.data, 'test')
    if len(test.images) == 0:
      raise ValueError('The test split is empty: noise_left measures on held-out sprites.')
    mesh = parallel.make_mesh()
    num_classes = len(dataset.recorded_class_names(config.data, workdir))
    step, params = drawing.restore_params(workdir, mesh, config.sample.use_ema,
                                          **from_config.state_kwargs(config, num_classes))
    s = from_config.sampling(config)
    model = from_config.model(config.model, num_classes)
    labels = test.labels if num_classes else np.full(len(test.images), -1)
    context = jnp.asarray(dataset.context(labels, num_classes))
    denoise = jax.jit(denoiser.make_denoiser(
        model_fn=models.network_fn(model, params), context=context, prediction=s.prediction,
        sigma_data=s.sigma_data, threshold=s.threshold, percentile=s.percentile,
        self_cond=s.self_cond))
    print(json.dumps({'workdir': workdir, 'step': step, 'sprites': len(test.images),
                      'clean_grain': grain.grain(test.images)}), flush=True)
    for record in measure(denoise, jnp.asarray(dataset.to_model(test.images)), s.logsnr_fn,
                          levels, jax.random.key(_SEED.value)):
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
