"""The value checks of from_config.validate: one row per key with a range, and the model built once.

A value out of range would otherwise be accepted silently (a negative learning rate makes the loss
climb), fail hours later (sample.batch_size=0 at the end of training), or fail inside JAX, Flax or
orbax with a message that names no key. Each row says what the key must be, in words.
"""
import math

import jax
import jax.numpy as jnp
import optax

from diffusion import denoiser, gaussian, losses, models, registry, samplers, schedules
from experiments.quality import features
from experiments.runtime import state

SEED_LIMIT = 2**32  # jax.random.key and numpy generators take seeds below this


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _at_least(low):
  return lambda x: _finite(x) and x >= low, f'>= {low}'


def _above(low):
  return lambda x: _finite(x) and x > low, f'> {low}'


def _within(low, high, *, open_low=False, open_high=False):
  def test(x):
    return (_finite(x) and (x > low if open_low else x >= low)
            and (x < high if open_high else x <= high))
  return test, f'in {"(" if open_low else "["}{low}, {high}{")" if open_high else "]"}'


_ANY_FINITE = (_finite, 'a finite number')
_SEED = _within(0, SEED_LIMIT, open_high=True)
_COUNT, _NATURAL, _POSITIVE = _at_least(1), _at_least(0), _above(0)
_STEPS = _within(0, 2**31 - 1)  # optax's schedules count steps in int32, as the train state does

RANGES = {
    'seed': _SEED,
    'data.tile_size': _NATURAL, 'data.test_fraction': _within(0, 1, open_high=True),
    'model.n_feat': _COUNT, 'model.blocks': _COUNT, 'model.head_dim': _COUNT,
    'model.patch': _COUNT,
    'model.dropout': _within(0, 1, open_high=True),
    'diffusion.beta_start': _within(0, 1, open_low=True, open_high=True),
    'diffusion.beta_end': _within(0, 1, open_low=True, open_high=True),
    'diffusion.cosine_s': _within(0, 1), 'diffusion.sigmoid_tau': _within(0.01, 100),
    'diffusion.sigmoid_start': _within(-50, 50), 'diffusion.sigmoid_end': _within(-50, 50),
    'diffusion.sigma_min': _POSITIVE, 'diffusion.sigma_max': _POSITIVE,
    'diffusion.rho': _within(0.1, 100), 'diffusion.shift': _within(-40, 40),
    'diffusion.shift_t0': _within(-40, 40), 'diffusion.sigma_data': _POSITIVE,
    'diffusion.min_snr_gamma': _POSITIVE, 'diffusion.sigmoid_bias': _ANY_FINITE,
    'diffusion.importance': _within(0, 1), 'diffusion.timesteps': _COUNT,
    'diffusion.cond_drop_rate': _within(0, 1),
    'train.steps': _STEPS, 'train.batch_size': _COUNT, 'train.max_epochs': _NATURAL,
    'train.learning_rate': _POSITIVE, 'train.warmup_steps': _STEPS,
    'train.weight_decay': _NATURAL, 'train.grad_clip': _NATURAL,
    'train.adam_beta2': _within(0, 1, open_high=True),
    'train.ema_halflife_kimg': _POSITIVE, 'train.ema_rampup': _NATURAL,
    'train.log_every': _NATURAL, 'train.ckpt_every': _NATURAL, 'train.keep_checkpoints': _COUNT,
    'train.keep_every': _NATURAL, 'train.sample_every': _NATURAL, 'train.eval_every': _NATURAL,
    'train.refiner_steps': _STEPS, 'train.refiner_learning_rate': _POSITIVE,
    'sample.steps': _COUNT, 'sample.eta': _NATURAL, 'sample.guidance': _ANY_FINITE,
    'sample.autoguidance': _NATURAL, 'sample.guide_step': _STEPS,
    'sample.dynamic_percentile': _within(0, 1, open_low=True), 'sample.per_class': _COUNT,
    'sample.seed': _SEED, 'sample.batch_size': _COUNT, 'sample.gif_frames': _NATURAL,
    'sample.upscale': _COUNT, 'sample.sheet_colors': _NATURAL, 'sample.sheet_upscale': _COUNT,
    'sample.sheet_key': _within(0, 255), 'sample.palette': _NATURAL,
    'sample.logsnr_end': _within(0, 40), 'sample.logsnr_start': _within(-40, 0),
    'sample.refine_draws': _within(0, 1024), 'sample.refine_logsnr': _within(-20, 20),
    'show.sprites': _COUNT, 'show.forward_frames': _COUNT, 'show.mix_rows': _COUNT,
    'show.mix_steps': _at_least(2),
    'runtime.cpu_devices': _NATURAL,
    'eval.num_samples': _COUNT, 'eval.near_copy': _POSITIVE, 'eval.knn': _COUNT,
    'eval.repeats': _COUNT, 'eval.seed': _SEED, 'eval.batch_size': _COUNT,
    'eval.feature_steps': _COUNT, 'eval.feature_seed': _SEED, 'eval.nearest_shown': _NATURAL,
    'eval.feature_width': _within(1, 128),
    'eval.feature_version': (lambda x: type(x) is int and x in features.VERSIONS,
                             f'one of {", ".join(map(str, features.VERSIONS))}'),
}
ORDERED = (('diffusion.beta_start', 'diffusion.beta_end'),
           ('diffusion.sigma_min', 'diffusion.sigma_max'),
           ('diffusion.sigmoid_start', 'diffusion.sigmoid_end'))


NAMES = {'model.name': models.MODELS, 'diffusion.schedule': schedules.SCHEDULES,
         'diffusion.prediction': gaussian.PREDICTIONS, 'diffusion.loss_weighting': losses.WEIGHTINGS,
         'diffusion.loss_norm': losses.NORMS, 'train.refiner_norm': losses.NORMS,
         'sample.sampler': samplers.SAMPLERS, 'sample.clip_x0': denoiser.THRESHOLDS}


def _has(config, key: str) -> bool:
  section, _, name = key.rpartition('.')
  return (not section or section in config) and name in (config[section] if section else config)


def get(config, key: str):
  section, _, name = key.rpartition('.')
  return (config[section] if section else config)[name]


def check_names(config) -> None:
  """Raise ValueError naming the key whose value is not in its registry, with the valid ones."""
  for key, valid in NAMES.items():  # tables list their names alphabetically, as registry.lookup
    registry.check(get(config, key), sorted(valid) if isinstance(valid, dict) else valid, key)


def check_values(config) -> None:
  """Raise ValueError naming the first key of RANGES or ORDERED whose value is out of range."""
  for key, (test, wanted) in RANGES.items():
    if _has(config, key) and not test(get(config, key)):
      raise ValueError(f'{key}={get(config, key)!r}: must be {wanted}.')
  for low, high in ORDERED:
    a, b = get(config, low), get(config, high)
    if not (a < b or (a == b and low == 'diffusion.beta_start')):  # constant betas are fine
      raise ValueError(f'{low}={a!r} must be below {high}={b!r}.')


def check_noise_levels(config, logsnr_fn, span: tuple[float, float] | None) -> None:
  """Raise ValueError naming the sample.* key that puts a noise level outside the configured
  schedule (logsnr_fn): the sampler's first level, the logSNR grid (`span`, sample.logsnr_grid
  parsed; None when unset) and the refining pass's level."""
  first, last = float(logsnr_fn(jnp.float32(1.0))), float(logsnr_fn(jnp.float32(0.0)))
  sample, schedule = config.sample, config.diffusion.schedule
  runs = f'the {schedule} schedule runs from logSNR {first:g} (t = 1) to {last:g} (t = 0)'
  if sample.refine_draws and not first < sample.refine_logsnr < last:
    raise ValueError(f'sample.refine_logsnr={sample.refine_logsnr:g}: {runs}; the refining pass '
                     'must noise to a level strictly inside (a nearly clean one, such as 4).')
  # Below 0 (check_values), so below any sample.logsnr_end. At or below the schedule's own first
  # level (the linear schedule's, say) there is nothing to skip: the sampler starts at t = 1.
  start = sample.logsnr_start
  if start and not start < (span[0] if span else last):
    raise ValueError(f'sample.logsnr_start={start:g}: {runs}; the first step must start below '
                     'sample.logsnr_grid\'s lo where that is set (EDM starts at -8.8; 0 starts '
                     'at t = 1).')
  if span is None:
    return
  grid = f'sample.logsnr_grid={sample.logsnr_grid!r}'
  if sample.logsnr_end:
    raise ValueError(f'{grid} and sample.logsnr_end={sample.logsnr_end:g} both place the steps: '
                     'set one of them.')
  if sample.steps < 3:
    raise ValueError(f'{grid} needs sample.steps >= 3 (got {sample.steps}): fewer steps leave no '
                     'room for both lo and hi.')
  if not (first < span[0] and span[1] < last):
    raise ValueError(f'{grid}: {runs}; lo and hi must lie strictly inside, so that every step '
                     'moves.')
  ts = samplers.time_grid(logsnr_fn, sample.steps, logsnr_span=span)[0]
  if not bool(jnp.all(jnp.diff(ts) < 0)):
    raise ValueError(f'{grid}: with {sample.steps} steps some land on the same time (lo and hi '
                     'too close, or too near an end of the schedule); widen the span or take '
                     'fewer steps.')


def check_refiner(config, logsnr_fn, band: tuple[float, float]) -> None:
  """Raise ValueError naming the key when the refiner's levels (`band`, train.refiner_logsnr
  parsed) leave the schedule, or the refining pass would noise outside them."""
  train, sample = config.train, config.sample
  if not train.refiner_steps:
    return
  (lo, hi), spec = band, repr(train.refiner_logsnr)
  first, last = float(logsnr_fn(jnp.float32(1.0))), float(logsnr_fn(jnp.float32(0.0)))
  if not (first < lo and hi < last):
    raise ValueError(f'train.refiner_logsnr={spec}: the {config.diffusion.schedule} schedule '
                     f'runs from logSNR {first:g} (t = 1) to {last:g} (t = 0); the refiner\'s '
                     'levels must lie strictly inside (nearly clean ones, such as 3,5).')
  if sample.refine_draws and sample.refiner and not lo <= sample.refine_logsnr <= hi:
    raise ValueError(f'sample.refine_logsnr={sample.refine_logsnr:g} lies outside '
                     f'train.refiner_logsnr={spec}, the levels the refiner is fine-tuned on: move '
                     'one to the other, or set sample.refiner=False (or train.refiner_steps=0).')


_BUILT: dict = {}  # (model section, image size) -> why it cannot be built ('' if it can)


def _build_error(config, model) -> str:
  """'' if `model` (the configured one) can be built, else why not (traced only: no arrays
  allocated)."""
  key = (repr(sorted(config.model.items())), config.data.image_size)
  if key not in _BUILT:
    try:
      jax.eval_shape(lambda: state.init(model, optax.identity(), state.init_key(0),
                                        config.data.image_size, 1))
      _BUILT[key] = ''
    except Exception as e:  # Flax and XLA raise many types for impossible widths; report any
      lines = str(e).strip().splitlines()
      _BUILT[key] = f'{type(e).__name__}: {lines[0] if lines else ""}'
  return _BUILT[key]


def check_model(config, model) -> None:
  """Raise ValueError naming model.* when `model`, the network config.model describes (built by
  from_config.model, which imports this module), cannot be built (e.g. a width that its
  GroupNorm cannot split), instead of failing inside Flax at the first step."""
  why = _build_error(config, model)
  if why:
    raise ValueError(f'model.n_feat={config.model.n_feat} (model.name={config.model.name}, '
                     f'data.image_size={config.data.image_size}): this model cannot be built '
                     f'({why}).')
