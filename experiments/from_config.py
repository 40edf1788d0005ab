"""The config, read once into the pieces the code uses (house rule: no config below here).

`validate` runs before any data is built or any array allocated, so a bad value
(unknown schedule, impossible combination) fails in the first second with its key named.
"""
import inspect

import jax.numpy as jnp

from diffusion import denoiser, gaussian, losses, models, samplers, schedules

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def logsnr_fn(diffusion_cfg):
  """The configured schedule as logsnr(t), with the zero-terminal-SNR rescale if asked."""
  make = schedules.get(diffusion_cfg.schedule)
  params = {name: diffusion_cfg[name] for name in inspect.signature(make).parameters}
  fn = make(**params)
  return schedules.rescale_zero_terminal_snr(fn) if diffusion_cfg.zero_terminal_snr else fn


def model(model_cfg, num_classes: int):
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f'Unknown model.dtype {model_cfg.dtype!r}; valid: {", ".join(DTYPES)}.')
  return models.get(model_cfg.name)(num_classes=max(num_classes, 1), n_feat=model_cfg.n_feat,
                                    dtype=DTYPES[model_cfg.dtype])


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def validate(config) -> None:
  """Every check that needs only the config; raises ValueError naming the key."""
  d, t, s = config.diffusion, config.train, config.sample
  logsnr_fn(d)
  models.get(config.model.name)
  _check(config.model.dtype in DTYPES, f'model.dtype must be one of {", ".join(DTYPES)}.')
  gaussian.check_prediction(d.prediction)
  _check(d.loss_weighting in losses.WEIGHTINGS,
         f'Unknown diffusion.loss_weighting {d.loss_weighting!r}; valid: {", ".join(losses.WEIGHTINGS)}.')
  samplers.get(s.sampler)
  _check(s.clip_x0 in denoiser.THRESHOLDS,
         f'Unknown sample.clip_x0 {s.clip_x0!r}; valid: {", ".join(denoiser.THRESHOLDS)}.')
  _check(not (d.zero_terminal_snr and d.prediction == 'eps'),
         'diffusion.zero_terminal_snr=True needs diffusion.prediction=v, x0 or edm: at SNR 0 an '
         'eps prediction says nothing about x0 (Lin et al. 2024, sec. 3.2).')
  _check(d.timesteps >= 1, 'diffusion.timesteps must be >= 1.')
  _check(0.0 <= d.cond_drop_rate <= 1.0, 'diffusion.cond_drop_rate must be in [0, 1].')
  _check(t.steps >= 0 and t.batch_size >= 1, 'train.steps must be >= 0 and train.batch_size >= 1.')
  _check(t.steps_per_dispatch >= 0 and t.steps % max(t.steps_per_dispatch, 1) == 0,
         f'train.steps={t.steps} must be a multiple of train.steps_per_dispatch={t.steps_per_dispatch} '
         '(or set it to 0: automatic).')
  _check(t.lr_schedule in ('constant', 'linear', 'cosine'),
         f'Unknown train.lr_schedule {t.lr_schedule!r}; valid: constant, linear, cosine.')
  _check(s.steps >= 1 and s.per_class >= 1, 'sample.steps and sample.per_class must be >= 1.')
  _check(config.data.image_size % 4 == 0 and config.data.image_size >= 8,
         f'data.image_size={config.data.image_size}: must be a multiple of 4, at least 8.')


def steps_per_dispatch(train_cfg, backend: str) -> int:
  """train.steps_per_dispatch, with 0 resolved: on accelerators the largest k <= 10 that divides
  train.steps (fusing steps hides launch overhead); on CPU 1, where XLA runs the convolution
  gradients inside a scan ~15x slower than at top level (jax 0.10.2)."""
  if train_cfg.steps_per_dispatch > 0:
    return train_cfg.steps_per_dispatch
  if backend == 'cpu':
    return 1
  return max(k for k in range(1, 11) if train_cfg.steps % k == 0)


def loss_kwargs(diffusion_cfg) -> dict:
  """Keyword arguments of diffusion.losses.diffusion_loss that come from the config."""
  d = diffusion_cfg
  return dict(prediction=d.prediction, weighting=d.loss_weighting, sigma_data=d.sigma_data,
              min_snr_gamma=d.min_snr_gamma, sigmoid_bias=d.sigmoid_bias)
