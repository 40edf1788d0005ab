"""The config boundary: the one place that reads config sections into plain values.

Everything below it (diffusion/, runtime/, quality/, pictures/) takes arrays, callables and
numbers. `validate` runs before any data is built or any array allocated, so a bad value
(unknown schedule, impossible combination) fails in the first second with its key named.
"""
import inspect
import json
import math

import jax.numpy as jnp
import optax
from absl import logging

from diffusion import models, registry, schedules
from experiments import config_checks
from experiments.runtime import drawing, multi_train, refiner

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
LR_SCHEDULES = ('constant', 'linear', 'cosine')


def logsnr_fn(diffusion_cfg):
  """The configured schedule as logsnr(t), with the zero-terminal-SNR rescale if asked."""
  make = schedules.get(diffusion_cfg.schedule)
  params = {name: diffusion_cfg[name] for name in inspect.signature(make).parameters}
  fn = make(**params)
  return schedules.rescale_zero_terminal_snr(fn) if diffusion_cfg.zero_terminal_snr else fn


def model(model_cfg, num_classes: int):
  """The configured network; model.channel_mult .. self_cond are the UNet's alone."""
  dtype = registry.lookup(DTYPES, model_cfg.dtype, 'model.dtype')
  cls, k = models.get(model_cfg.name), max(num_classes, 1)
  if cls is models.ContextUnet:
    return cls(num_classes=k, n_feat=model_cfg.n_feat, dtype=dtype)
  return cls(num_classes=k, channels=tuple(model_cfg.n_feat * m for m in model_cfg.channel_mult),
             blocks=model_cfg.blocks, attention=tuple(model_cfg.attention),
             head_dim=model_cfg.head_dim, dropout=model_cfg.dropout, dtype=dtype,
             self_cond=model_cfg.self_cond, patch=model_cfg.patch)


def learning_rate(train_cfg) -> optax.Schedule:
  """Warm-up (linear from 0) then the configured decay over the remaining steps."""
  peak, warmup = train_cfg.learning_rate, train_cfg.warmup_steps
  decay_steps = max(train_cfg.steps - warmup, 1)
  main = {'constant': lambda: optax.constant_schedule(peak),
          'linear': lambda: optax.linear_schedule(peak, 0.0, decay_steps),
          'cosine': lambda: optax.cosine_decay_schedule(peak, decay_steps),
          }[train_cfg.lr_schedule]()
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def optimizer(train_cfg) -> optax.GradientTransformation:
  """Adam (AdamW when train.weight_decay > 0), after a global-norm clip when train.grad_clip > 0."""
  lr = learning_rate(train_cfg)
  b2 = train_cfg.adam_beta2
  adam = (optax.adamw(lr, b2=b2, weight_decay=train_cfg.weight_decay)
          if train_cfg.weight_decay > 0 else optax.adam(lr, b2=b2))
  if train_cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adam)
  return adam


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def validate(config) -> None:
  """Every check that needs only the config; raises ValueError naming the key."""
  diffusion, train, sample = config.diffusion, config.train, config.sample
  # Each key's own name or range (config_checks); then what ties keys together.
  config_checks.check_names(config)
  config_checks.check_values(config)
  logsnr_fn(diffusion)
  registry.check(config.model.dtype, DTYPES, 'model.dtype')
  registry.check(train.lr_schedule, LR_SCHEDULES, 'train.lr_schedule')
  _check(not (diffusion.zero_terminal_snr and diffusion.prediction == 'eps'),
         'diffusion.zero_terminal_snr=True needs diffusion.prediction=v, x0 or edm: at SNR 0 an '
         'eps prediction says nothing about x0 (Lin et al. 2024, sec. 3.2).')
  _check(train.steps_per_dispatch >= 0 and train.steps % max(train.steps_per_dispatch, 1) == 0,
         f'train.steps={train.steps} must be a multiple of train.steps_per_dispatch='
         f'{train.steps_per_dispatch} (or set it to 0: automatic).')
  _check(diffusion.cond_drop_rate > 0 or not sample.guidance,
         f'sample.guidance={sample.guidance:g} steers away from the null context, which '
         'diffusion.cond_drop_rate=0 never trains: set sample.guidance=0 (autoguidance needs no '
         'null context), or train with diffusion.cond_drop_rate > 0 (0.1 is usual).')
  _check(not sample.autoguidance or sample.guide_step >= 1,
         f'sample.autoguidance={sample.autoguidance:g} needs sample.guide_step >= 1, the step whose '
         'weights guide (an early checkpoint of the same run, e.g. 1/20 of train.steps).')
  _check(config.data.image_size % 4 == 0 and config.data.image_size >= 8,
         f'data.image_size={config.data.image_size}: must be a multiple of 4, at least 8.')
  _validate_unet(config.model, config.data.image_size)
  unet = is_unet(config.model.name)
  _check(unet or config.model.patch == 1,
         f'model.patch={config.model.patch} needs model.name=unet or unet_mp (got '
         f'{config.model.name!r}).')
  _check(unet or not config.model.self_cond,
         f'model.self_cond=True needs model.name=unet or unet_mp (got {config.model.name!r}): '
         'the course\'s ContextUnet has no input for its earlier estimate.')
  drawing.mix_weights(sample.mix)
  drawing.guidance_interval(sample.guidance_logsnr)
  config_checks.check_noise_levels(config, logsnr_fn(config.diffusion),
                                   drawing.logsnr_span(sample.logsnr_grid))
  config_checks.check_refiner(config, logsnr_fn(config.diffusion),
                              drawing.refiner_band(config.train.refiner_logsnr))
  config_checks.check_model(config, model(config.model, 1))


def refiner_settings(train_cfg) -> dict:
  """train.refiner_* as runtime/refiner.py stores them."""
  return refiner.settings(train_cfg.refiner_steps, drawing.refiner_band(train_cfg.refiner_logsnr),
                          train_cfg.refiner_norm, train_cfg.refiner_learning_rate)


def is_unet(name: str) -> bool:
  """The UNet or its magnitude-preserving variant: the models with the UNet's keys."""
  return issubclass(models.get(name), models.UNet)


def _validate_unet(model_cfg, image_size: int) -> None:
  if not is_unet(model_cfg.name):
    return
  levels = len(model_cfg.channel_mult)
  _check(levels >= 1 and min(model_cfg.channel_mult) >= 1,
         'model.channel_mult needs at least one level, every multiple >= 1.')
  unit = model_cfg.patch * 2 ** (levels - 1)
  _check(image_size % unit == 0,
         f'data.image_size={image_size} must split into model.patch={model_cfg.patch} pixel '
         f'patches and then halve {levels - 1} times for model.channel_mult='
         f'{tuple(model_cfg.channel_mult)}: use fewer levels, a smaller patch or a size '
         f'divisible by {unit}.')
  _check(all(0 <= a < levels for a in model_cfg.attention),
         f'model.attention={tuple(model_cfg.attention)}: levels must be in 0..{levels - 1}.')


def capped_steps(train_cfg, train_size: int) -> int:
  """train.steps, or fewer where train.max_epochs passes over `train_size` sprites come first.

  Why passes and not steps: the training time at which a diffusion model starts to reproduce
  its training images grows in proportion to their number (Favero et al. 2025, "Bigger Isn't
  Always Memorizing"; Bonnaire et al. 2025), so one step budget cannot suit 2,000 sprites and
  89,400. Rounded up to whole dispatches (10 steps when automatic) so that fused steps still
  divide it."""
  if train_cfg.max_epochs <= 0:
    return train_cfg.steps
  unit = train_cfg.steps_per_dispatch or 10
  passes = math.ceil(train_cfg.max_epochs * train_size / train_cfg.batch_size / unit) * unit
  return min(train_cfg.steps, max(passes, unit))


def cap_steps(config, train_size: int) -> None:
  """Lower config.train.steps to capped_steps, saying so; before the optimizer is built, so that
  its schedule ends there too. sample.guide_step shrinks with it: the guide stays the weights at
  the same share of the run (in whole dispatches, at least one)."""
  steps = capped_steps(config.train, train_size)
  if steps < config.train.steps:
    logging.info('train.max_epochs=%g: that many passes over %d training sprites end this run at '
                 'step %d, before train.steps=%d (raise train.max_epochs, or set it to 0, to train '
                 'longer).', config.train.max_epochs, train_size, steps, config.train.steps)
    guide = config.sample.guide_step
    if guide:
      unit = config.train.steps_per_dispatch or 10
      config.sample.guide_step = _whole_dispatches(guide * steps / config.train.steps, unit)
      logging.info('sample.guide_step=%d scaled with it to %d.', guide, config.sample.guide_step)
    config.train.steps = steps


def _whole_dispatches(step: float, per_dispatch: int) -> int:
  """`step` rounded to whole dispatches, at least one: a step the training loop reaches."""
  return max(per_dispatch, round(step / per_dispatch) * per_dispatch)


def guide_steps(config, backend: str) -> tuple[int, ...]:
  """(sample.guide_step,) for training to save and keep, checked against the run's (capped)
  steps and dispatches; () when it is 0."""
  step, train = config.sample.guide_step, config.train
  if not step:
    return ()
  per_dispatch = steps_per_dispatch(train, backend)
  suggested = _whole_dispatches(train.steps / 21, per_dispatch)
  _check(step < train.steps and step % per_dispatch == 0,
         f'sample.guide_step={step} must be a step this run saves: below train.steps={train.steps} '
         f'and a multiple of the {per_dispatch} step(s) per dispatch: set e.g. '
         f'sample.guide_step={suggested} (1/21 of the run, as the cpu preset), or '
         'sample.autoguidance=0 and sample.guide_step=0.')
  for key in ('sample_every', 'eval_every'):
    every = train[key]
    _check(not config.sample.autoguidance or not every or every >= step,
           f'train.{key}={every} draws with autoguidance before its guide, step {step}, exists: '
           f'use 0 or at least {step}.')
  return (step,)


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
  cfg = diffusion_cfg
  return dict(prediction=cfg.prediction, weighting=cfg.loss_weighting, sigma_data=cfg.sigma_data,
              min_snr_gamma=cfg.min_snr_gamma, sigmoid_bias=cfg.sigmoid_bias, norm=cfg.loss_norm)


def train_step_kwargs(config, num_classes: int, backend: str) -> dict:
  """Every keyword of runtime.train_step.make except model, tx and mesh."""
  diffusion, train = config.diffusion, config.train
  return dict(logsnr_fn=logsnr_fn(diffusion), loss_kwargs=loss_kwargs(diffusion),
              timesteps=diffusion.timesteps, batch_size=train.batch_size, num_classes=num_classes,
              cond_drop_rate=diffusion.cond_drop_rate, ema_halflife_kimg=train.ema_halflife_kimg,
              ema_rampup=train.ema_rampup, hflip=train.hflip, importance=diffusion.importance,
              self_cond=config.model.self_cond,
              steps_per_dispatch=steps_per_dispatch(train, backend))


def state_kwargs(config, num_classes: int) -> dict:
  """The keywords of runtime.state.create_or_restore that come from the config."""
  return dict(model=model(config.model, num_classes), tx=optimizer(config.train), seed=config.seed,
              image_size=config.data.image_size, num_classes=num_classes)


def sampling(config, guidance: float | None = None) -> drawing.Sampling:
  """How the configured sampler draws; `guidance` overrides sample.guidance."""
  sample, diffusion = config.sample, config.diffusion
  return drawing.Sampling(
      logsnr_fn=logsnr_fn(diffusion), prediction=diffusion.prediction,
      sigma_data=diffusion.sigma_data, sampler=sample.sampler, steps=sample.steps, eta=sample.eta,
      logsnr_end=sample.logsnr_end or math.inf, logsnr_grid=drawing.logsnr_span(sample.logsnr_grid),
      guidance=sample.guidance if guidance is None else guidance,
      guidance_logsnr=drawing.guidance_interval(sample.guidance_logsnr), threshold=sample.clip_x0,
      percentile=sample.dynamic_percentile, image_size=config.data.image_size,
      self_cond=config.model.self_cond, autoguidance=sample.autoguidance,
      refine_draws=sample.refine_draws, refine_logsnr=sample.refine_logsnr,
      logsnr_start=sample.logsnr_start or -math.inf)


# Models whose configs differ only in these keys (and in sample.* / eval.*) train as one vmapped
# step (runtime/multi_train.py); any other key changes a shape or a code path.
VALUE_KEYS = ('seed', 'train.learning_rate', 'train.ema_halflife_kimg', 'train.ema_rampup',
              'diffusion.cond_drop_rate', 'diffusion.sigma_data', 'diffusion.min_snr_gamma',
              'diffusion.sigmoid_bias')


def shared_training(config) -> str:
  """What models must have in common to train together, as a string: the config less
  VALUE_KEYS and the sample / eval sections."""
  d = config.to_dict()
  for section in ('sample', 'eval'):
    d.pop(section)
  for key in VALUE_KEYS:
    section, _, name = key.rpartition('.')
    (d[section] if section else d).pop(name)
  return json.dumps(d, sort_keys=True, default=str)


def member_settings(config) -> multi_train.Settings:
  diffusion, train = config.diffusion, config.train
  return multi_train.Settings(
      learning_rate=train.learning_rate, ema_halflife_kimg=train.ema_halflife_kimg,
      ema_rampup=train.ema_rampup, cond_drop_rate=diffusion.cond_drop_rate,
      sigma_data=diffusion.sigma_data, min_snr_gamma=diffusion.min_snr_gamma,
      sigmoid_bias=diffusion.sigmoid_bias)


def multi_train_kwargs(configs, num_classes: int, backend: str) -> dict:
  """The keywords of runtime.multi_train.make except model and mesh, for configs that differ
  only in VALUE_KEYS (ValueError otherwise)."""
  if len({shared_training(c) for c in configs}) > 1:
    raise ValueError('Models trained in one step may differ only in '
                     f'{", ".join(VALUE_KEYS)} (and sample.*, eval.*).')
  config = configs[0]
  unit = config.train.copy_and_resolve_references()
  unit.learning_rate = 1.0  # each model scales the updates by its own peak (multi_train.scaled)
  diffusion = config.diffusion
  return dict(unit_tx=optimizer(unit), logsnr_fn=logsnr_fn(diffusion),
              prediction=diffusion.prediction, weighting=diffusion.loss_weighting,
              norm=diffusion.loss_norm, timesteps=diffusion.timesteps,
              batch_size=config.train.batch_size,
              hflip=config.train.hflip, importance=diffusion.importance,
              self_cond=config.model.self_cond,
              num_classes=num_classes, steps_per_dispatch=steps_per_dispatch(config.train, backend))
