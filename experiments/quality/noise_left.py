"""How much noise the network leaves: held-out sprites noised to a few logSNR levels, each
denoised in one step and compared with the clean sprites.

Where samples are grainy this says whether the network's x0_hat of *real* sprites already is:
a sampler's last step jumps to x0_hat from a nearly clean level, so noise the network cannot
tell from detail there stays in the samples. Per level, as JSON lines:
  noise_left  mean |x0_hat - x0|^2 over the input's noise in x0 space, sigma^2 / alpha^2 =
              exp(-logsnr): 0 for a perfect denoiser, 1 for one that returns x_t / alpha; all
              of x0_hat's error counts, so a network that adds error scores above 1
  grain       quality/grain.py of the x0_hat sprites (the clean sprites' own: the first line)
and the same two for the do-nothing denoiser, x_t / alpha clipped to the data range (input_*).
By default the plain conditional network (EMA weights if sample.use_ema); --guided denoises as
the sampler does, with the config's autoguidance and classifier-free guidance; --refiner with the
run's refiner, unguided (the presets' guidance stops below the refining level), as the refining
pass denoises (with --logsnr=4 --draws=8: that pass applied to real sprites). A
self-conditioned network is called twice, the second time with the first x0_hat, as a sampler's
later steps are.

  python -m experiments.quality.noise_left --config=configs/sprites.py:cpu \\
      --workdir=runs/sprites-cpu [--guided | --refiner] [--logsnr=2,5,6] [--draws=16]
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from diffusion import denoiser, gaussian, samplers, schedules
from experiments import from_config
from experiments.data import dataset
from experiments.quality import grain
from experiments.runtime import cli, drawing, errors, logs, parallel, refiner, trained_with

def measure(denoise, x0: jax.Array, logsnr_fn, levels, key: jax.Array,
            draws: int = 1) -> list[dict]:
  """One record per logSNR level: noise_left and grain of x0_hat = denoise(x_t, t, logsnr)[0]
  for sprites x0 [N, H, W, C] in [-1, 1] noised to that level (t where the schedule reaches it),
  and of the do-nothing clip(x_t / alpha). draws > 1: x0_hat (and x_t) averaged over that many
  noisings of each sprite, as sample.refine_draws does; the part of the error that follows the
  noise shrinks, the rest stays."""
  n, records = x0.shape[0], []
  for i, level in enumerate(levels):
    logsnr = jnp.full((n,), level, jnp.float32)
    t = jnp.full((n,), samplers.time_at(logsnr_fn, level), jnp.float32)
    alpha, _ = schedules.alpha_sigma(logsnr[0])
    x0_hat, x_t = jnp.zeros_like(x0), jnp.zeros_like(x0)
    level_key = jax.random.fold_in(key, i)  # the first draw's noise as before --draws existed
    for j in range(draws):
      eps = jax.random.normal(jax.random.fold_in(level_key, j) if j else level_key, x0.shape)
      noisy = gaussian.diffuse(x0=x0, eps=eps, logsnr=logsnr)
      x0_hat, x_t = x0_hat + denoise(noisy, t, logsnr)[0] / draws, x_t + noisy / draws
    record = {'logsnr': float(level), 'draws': draws}
    for name, x0_hat in (('', x0_hat), ('input_', jnp.clip(x_t / alpha, -1.0, 1.0))):
      record[name + 'noise_left'] = float(jnp.mean(jnp.square(x0_hat - x0))) / math.exp(-level)
      record[name + 'grain'] = grain.grain(dataset.to_uint8(np.asarray(x0_hat)))
    records.append(record)
  return records


def check_levels(values, logsnr_fn) -> list[float]:
  """--logsnr as floats strictly inside the schedule's range and at most 20 (the UNet clips logSNR
  there, and beyond it float32 sprites hardly change), or a ValueError naming the flag."""
  top, bottom = (float(logsnr_fn(jnp.float32(t))) for t in (0.0, 1.0))
  top = min(top, 20.0 + 1e-6)
  try:
    levels = [float(v) for v in values]
  except ValueError as e:
    raise ValueError(f'--logsnr={",".join(values)}: give numbers ({e}).') from None
  outside = [v for v in levels if not (bottom < v < top and math.isfinite(v))]
  if outside or not levels:
    raise ValueError(f'--logsnr: every level must lie inside the schedule\'s range '
                     f'({bottom:.2f}, {top:.2f}); got {outside or "none"}.')
  return levels


def make_denoise(config, workdir: str, num_classes: int, labels: np.ndarray, guided: bool,
                 use_refiner: bool = False):
  """(step, denoise(x_t, t, logsnr) -> (x0_hat, None)) for the workdir's latest checkpoint (with
  use_refiner, its refiner), in blocks of sample.batch_size sprites (the weights an argument of
  the jitted call, not baked in)."""
  if guided and use_refiner:
    raise ValueError('--guided and --refiner: the refining pass is not autoguided; give one.')
  mesh, s = parallel.make_mesh(), from_config.sampling(config)
  kwargs = from_config.state_kwargs(config, num_classes)
  trained_with.check(config, workdir, trained_with.DRAWING, 'denoising with it')
  step, params = drawing.restore_params(workdir, mesh, config.sample.use_ema, **kwargs)
  if use_refiner:  # the refiner of those weights, not autoguided, as in the refining pass
    refined = refiner.attach(params, params, workdir, step, config.sample, mesh, **kwargs)
    if not isinstance(refined, refiner.Refined):
      raise ValueError(
          f'--refiner: {workdir} holds no refiner of step {step} for the refining pass to use '
          '(it needs sample.refine_draws > 0, sample.refiner=True, and the training command run '
          'to its end, which fine-tunes one); drop --refiner to measure the drawing network.')
    params = refined.refiner
  elif guided:  # the drawing network as the sampler guides it
    params = drawing.with_guide(params, workdir, mesh, config.sample, **kwargs)
  model = from_config.model(config.model, num_classes)

  @jax.jit
  def x0_hat(params, x_t, t, logsnr, context):
    denoise = denoiser.make_denoiser(
        model_fn=drawing.network(model, params, s.autoguidance if guided else 0.0),
        context=context, prediction=s.prediction, sigma_data=s.sigma_data,
        guidance=s.guidance if guided else 0.0,
        guidance_logsnr=s.guidance_logsnr if guided else (-jnp.inf, jnp.inf),
        threshold=s.threshold, percentile=s.percentile, self_cond=s.self_cond)
    first = denoise(x_t, t, logsnr)[0]
    return denoise(x_t, t, logsnr, jnp.clip(first, -1.0, 1.0))[0] if s.self_cond else first

  context = dataset.context(labels, num_classes)
  block = config.sample.batch_size

  def denoise(x_t, t, logsnr):
    parts = [x0_hat(params, x_t[i:i + block], t[i:i + block], logsnr[i:i + block],
                    jnp.asarray(context[i:i + block])) for i in range(0, len(x_t), block)]
    return jnp.concatenate(parts), None
  return step, denoise


def main(argv):
  del argv
  logs.quiet_libraries()
  args = flags.FLAGS
  with errors.reported():
    config, workdir = args.config, args.workdir
    from_config.validate(config)
    logsnr_fn = from_config.logsnr_fn(config.diffusion)
    levels = check_levels(args.logsnr, logsnr_fn)
    if args.draws < 1:
      raise ValueError(f'--draws={args.draws}: average over at least one noising.')
    train, test = dataset.load(config.data, 'train'), dataset.load(config.data, 'test')
    if len(test.images) == 0:
      raise ValueError('The test split is empty: noise_left measures on held-out sprites.')
    dataset.check_trained_on(workdir, train, 'the held-out sprites may include ones it learnt')
    num_classes = len(dataset.recorded_class_names(config.data, workdir))
    labels = test.labels if num_classes else np.full(len(test.images), -1)
    step, denoise = make_denoise(config, workdir, num_classes, labels, args.guided, args.refiner)
    print(json.dumps({'workdir': workdir, 'step': step, 'guided': args.guided,
                      'refiner': args.refiner,
                      'sprites': len(test.images), 'clean_grain': grain.grain(test.images)}),
          flush=True)
    for record in measure(denoise, jnp.asarray(dataset.to_model(test.images)), logsnr_fn,
                          levels, jax.random.key(args.seed), args.draws):
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  # Defined here, not on import: tests import this module beside others that define --config.
  cli.define_config('Config file[:preset] of the run.')
  flags.DEFINE_string('workdir', None, 'The trained run (its latest checkpoint).')
  flags.DEFINE_list('logsnr', ['-2', '0', '2', '4', '5', '6', '8'], 'Levels to noise to.')
  flags.DEFINE_bool('guided', False, 'With the config\'s autoguidance and classifier-free '
                    'guidance, as the sampler draws.')
  flags.DEFINE_bool('refiner', False, "With the run's refiner, as the refining pass denoises.")
  flags.DEFINE_integer('seed', 0, 'Seed of the noise.')
  flags.DEFINE_integer('draws', 1, 'Average x0_hat over this many noisings of each sprite, as '
                       'sample.refine_draws does.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
