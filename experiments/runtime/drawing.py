"""Drawing sprites with a trained network: the jitted sampling function, batches, contexts.

What --mode=sample, show, eval and the benchmark share. Sprite i's noise derives from
(seed, i) alone, so a sprite is the same at any batch size or device count.
"""
import dataclasses
import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion import denoiser, models, samplers
from experiments.data import dataset
from experiments.runtime import checkpoints, files, parallel, refiner, state as state_lib


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How to draw: the schedule, what the network predicts, the sampler and its settings."""
  logsnr_fn: Callable[[jax.Array], jax.Array]
  prediction: str
  sigma_data: float
  sampler: str
  steps: int
  eta: float
  logsnr_end: float  # where the last step jumps to x0_hat; inf = walk to t = 0
  guidance: float
  guidance_logsnr: tuple[float, float]  # the noise levels guided: (-inf, inf) is all of them
  threshold: str
  percentile: float
  image_size: int
  self_cond: bool = False  # the network also takes the last x0_hat
  logsnr_grid: tuple[float, float] | None = None  # steps uniform in logSNR over (lo, hi); None: in t
  autoguidance: float = 0.0  # > 0: params are (weights, guide weights), see with_guide
  refine_draws: int = 0  # > 0: the result averaged over this many re-noisings (samplers.refine)
  refine_logsnr: float = 4.0  # ... at this noise level, by params' refiner if refiner.Refined
  logsnr_start: float = -float('inf')  # where the first step starts from pure noise; -inf: t = 1


class Guided(NamedTuple):
  """The weights that draw, and the early weights of the same run that autoguidance steers from."""
  params: Any
  guide: Any


def restore_params(workdir: str, mesh, use_ema: bool, **state_kwargs):
  """(step, params) of the workdir's latest checkpoint: its EMA weights if `use_ema`."""
  state = state_lib.create_or_restore(mesh=mesh, mngr=checkpoints.manager(workdir, 1, create=False),
                                      must_exist=True, **state_kwargs)
  if state is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints: train first '
                            '(--mode=train), or point --workdir at a trained run.')
  return int(state.step), state.ema_params if use_ema else state.params


def guide_step(workdir: str, sample_cfg, log: bool = False) -> int:
  """The checkpoint autoguidance steers from: sample.guide_step, or, where the workdir has no such
  checkpoint, the guide a capped run scaled it to and recorded (from_config.cap_steps)."""
  step = sample_cfg.guide_step
  if not sample_cfg.autoguidance:
    return step
  kept = checkpoints.manager(workdir, 1, create=False).all_steps()
  recorded = files.read_json(os.path.join(workdir, 'config.json')).get('sample', {})
  recorded = recorded.get('guide_step')
  if step in kept or recorded not in kept:
    return step
  if log:
    logging.info('sample.guide_step=%d: no such checkpoint; using step %d, the guide this run '
                 'kept (its config.json).', step, recorded)
  return recorded


def with_guide(params, workdir: str, mesh, sample_cfg, **state_kwargs):
  """`params`, or Guided(params, the weights of checkpoint sample.guide_step) when autoguidance
  is on; the guide is read from `workdir` (EMA weights if sample.use_ema, as the drawing ones)."""
  if not sample_cfg.autoguidance:
    return params
  mngr = checkpoints.manager(workdir, 1, create=False)
  step = guide_step(workdir, sample_cfg, log=True)
  state = checkpoints.restore_step(
      mngr, step,
      state_lib.abstract_state(mesh=mesh, **state_kwargs),
      why=f'sample.autoguidance={sample_cfg.autoguidance:g} steers from the weights of step '
          f'{step} (sample.guide_step)',
      fix='train with that sample.guide_step (training keeps its checkpoint), set sample.guide_step '
          'to a step listed there, or sample.autoguidance=0')
  return Guided(params, state.ema_params if sample_cfg.use_ema else state.params)


def weights(workdir: str, mesh, sample_cfg, *, params=None, step: int | None = None,
            **state_kwargs):
  """(step, what make_sample_fn's function draws with): `params`, or the workdir's latest
  checkpoint's, paired with the guide's weights when autoguidance is on (with_guide), and with
  the refiner of those weights when the refining pass uses one (refiner.attach)."""
  if params is None:
    step, params = restore_params(workdir, mesh, sample_cfg.use_ema, **state_kwargs)
  guided = with_guide(params, workdir, mesh, sample_cfg, **state_kwargs)
  return step, refiner.attach(guided, params, workdir, step, sample_cfg, mesh, **state_kwargs)


def network(model, params, autoguidance: float):
  """The network to draw with: `params`' alone, or with autoguidance > 0 a Guided pair's,
  steered away from its guide (with_guide makes the pair)."""
  if autoguidance:
    return denoiser.autoguided(models.network_fn(model, params.params),
                               models.network_fn(model, params.guide), autoguidance)
  return models.network_fn(model, params)


def make_sample_fn(model, sampling: Sampling, mesh, frames: int):
  """jitted (params, keys [B], context [B, K]) -> x [B, S, S, 3] (and the Movie), sharded on B;
  params a Guided pair when sampling.autoguidance > 0 (with_guide makes it), either of them in
  a refiner.Refined pair when a refiner does the refining pass (refiner.attach)."""
  s = sampling  # pylint: disable=invalid-name
  grid = samplers.time_grid(s.logsnr_fn, s.steps, s.logsnr_end, s.logsnr_grid, s.logsnr_start)
  t_refine = float(samplers.time_at(s.logsnr_fn, s.refine_logsnr)) if s.refine_draws else 0.0

  def fn(params, keys, context):
    params, refiner_params = params if isinstance(params, refiner.Refined) else (params, None)
    make = lambda model_fn: denoiser.make_denoiser(
        model_fn=model_fn, context=context,
        prediction=s.prediction, sigma_data=s.sigma_data, guidance=s.guidance,
        guidance_logsnr=s.guidance_logsnr,
        threshold=s.threshold, percentile=s.percentile, self_cond=s.self_cond)
    denoise = make(network(model, params, s.autoguidance))
    out = samplers.sample(denoise=denoise, grid=grid, keys=keys,
                          shape=(s.image_size, s.image_size, 3), sampler=s.sampler, eta=s.eta,
                          frames=frames, self_cond=s.self_cond)
    if not s.refine_draws:
      return out
    x, movie = out if frames else (out, None)
    if refiner_params is not None:
      denoise = make(models.network_fn(model, refiner_params))
    x = samplers.refine(denoise, x, keys, t=t_refine, logsnr=s.refine_logsnr,
                        draws=s.refine_draws, self_cond=s.self_cond)
    return (x, movie) if frames else x

  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  if not frames:
    return jax.jit(fn, in_shardings=(rep, shard, shard), out_shardings=shard)
  frame_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'data'))
  movie = samplers.Movie(frame_sharding, frame_sharding, rep, rep)
  return jax.jit(fn, in_shardings=(rep, shard, shard), out_shardings=(shard, movie))


def generate(fn, params, seed: int, context: np.ndarray, batch_size: int, mesh, frames: int,
             indices: np.ndarray | None = None):
  """(uint8 sprites, Movie of uint8 frames or None) for every context row, in batches.

  Calls of batch_size rows, the last only as large as the rows left (rounded up to the devices,
  padded with the last row): 320 rows at 256 draw 256 and 64, not 256 twice. Not two even calls
  of 160: on XLA:CPU a call's size can move a pixel by 1, and full calls draw as they always did.

  Row r's noise derives from (seed, indices[r]); indices defaults to 0..N-1 (sprite i gets
  noise i). Repeating an index gives rows the same noise, so that only their contexts differ
  (the interpolation grid, the guidance strip).
  """
  n = len(context)
  indices = np.arange(n) if indices is None else np.asarray(indices)
  whole = lambda rows: -(-rows // mesh.size) * mesh.size  # rows rounded up to the devices
  batch = whole(min(batch_size, n))
  base = jax.random.key(seed)
  images, movies = [], []
  for start in range(0, n, batch):
    rows = np.minimum(np.arange(start, start + min(batch, whole(n - start))), n - 1)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.asarray(indices[rows]))
    out = fn(params, keys, jnp.asarray(context[rows]))
    x, movie = out if frames else (out, None)
    images.append(dataset.to_uint8(parallel.gather(x)))  # sharded over every process's devices
    movies.append(jax.tree.map(parallel.gather, movie))
  images = np.concatenate(images)[:n]
  if not frames:
    return images, None
  first = movies[0]
  return images, samplers.Movie(
      *(np.concatenate([dataset.to_uint8(getattr(m, f)) for m in movies], axis=1)[:, :n]
        for f in ('x_t', 'x0')), np.asarray(first.step), np.asarray(first.t))


MIX_EXAMPLE = "'food_drink:0.6,objects:0.4;0:0.5,1:0.5'"
MIX_MAX_WEIGHT = 100.0  # the network saw one-hot contexts: far beyond 1 is noise, and float32 overflows


def mix_weights(spec: str) -> list[list[tuple[str, float]]]:
  """'food:0.6,spell:0.4;0:1' -> [[('food', 0.6), ('spell', 0.4)], [('0', 1.0)]], checked before
  any class is known: every item CLASS or CLASS:WEIGHT, weights >= 0, each mix's total > 0."""
  mixes = []
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    items = []
    for item in part.split(','):
      name, _, weight = (text.strip() for text in item.partition(':'))
      try:
        value = float(weight) if weight else 1.0
      except ValueError:
        value = float("nan")
      if not name or not 0 <= value <= MIX_MAX_WEIGHT:  # also refuses nan
        raise ValueError(f'sample.mix={spec!r}: {item.strip()!r} is not CLASS:WEIGHT (a class '
                         f'name or index, a weight in [0, {MIX_MAX_WEIGHT:g}]), as in {MIX_EXAMPLE}.')
      items.append((name, value))
    if not sum(value for _, value in items) > 0:
      raise ValueError(f'sample.mix={spec!r}: the weights of {part!r} are all 0.')
    mixes.append(items)
  return mixes


def parse_mix(spec: str, class_names) -> list[np.ndarray]:
  """'food:0.6,spell:0.4;0:1' -> context vectors; classes by name or index."""
  vectors = []
  for items in mix_weights(spec):
    v = np.zeros(len(class_names), np.float32)
    for name, weight in items:
      index = name.isascii() and name.isdigit()  # not str.isdigit alone: it accepts '²'
      k = int(name) if index else (class_names.index(name) if name in class_names else -1)
      if not 0 <= k < len(class_names):
        raise ValueError(f'sample.mix: unknown class {name!r} in {spec!r}; classes: '
                         f'{", ".join(class_names) or "none (an unconditional dataset)"} (or '
                         'their indices).')
      v[k] += weight
    vectors.append(v)
  return vectors


def contexts(class_names, per_class: int, mix: str = ''):
  """(context [N, K], labels [N], rows): per_class sprites of each class, then of each mix."""
  k = max(len(class_names), 1)
  labels = np.repeat(np.arange(len(class_names)) if class_names else np.array([-1]), per_class)
  ctx = dataset.context(labels, len(class_names))
  mixes = parse_mix(mix, list(class_names)) if mix else []
  for v in mixes:
    ctx = np.concatenate([ctx, np.repeat(v[None], per_class, 0)])
    labels = np.concatenate([labels, np.full(per_class, -1)])
  return ctx.reshape(-1, k), labels.astype(np.int32), len(class_names or [0]) + len(mixes)


def sprite_names(class_names, per_class: int, mix: str = '') -> tuple[list[str], list[str]]:
  """(name, class) of each sprite in `contexts` order: 'food_drink_03', or 'mix1_03' of class 'mix1'."""
  groups = list(class_names) or ['unconditional']
  groups += [f'mix{m}' for m in range(len([p for p in mix.split(';') if p.strip()]))]
  classes = [g for g in groups for _ in range(per_class)]
  return [f'{g}_{j:02d}' for g in groups for j in range(per_class)], classes


def _logsnr_pair(spec: str, key: str, example: str, empty: str = '') -> tuple[float, float]:
  """'lo,hi' as two finite floats with lo < hi, or a ValueError naming the key (and what ''
  would do, if it is allowed)."""
  try:
    lo, hi = (float(x) for x in spec.split(','))
  except ValueError:
    lo = hi = math.nan
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    alternative = f" (or '' {empty})" if empty else ''
    raise ValueError(f'{key}={spec!r}: want two finite logSNR values lo,hi with lo < hi, e.g. '
                     f"'{example}'{alternative}.")
  return lo, hi


def guidance_interval(spec: str) -> tuple[float, float]:
  """sample.guidance_logsnr as (lo, hi): '' -> every noise level, '-3,3' -> (-3.0, 3.0)."""
  if not spec.strip():
    return -math.inf, math.inf
  return _logsnr_pair(spec, 'sample.guidance_logsnr', '-3,3', 'to guide at every noise level')


def refiner_band(spec: str) -> tuple[float, float]:
  """train.refiner_logsnr as (lo, hi): the levels the refiner is fine-tuned on."""
  return _logsnr_pair(spec, 'train.refiner_logsnr', '3,5')


def logsnr_span(spec: str) -> tuple[float, float] | None:
  """sample.logsnr_grid as (lo, hi), or None ('': steps uniform in t)."""
  if not spec.strip():
    return None
  return _logsnr_pair(spec, 'sample.logsnr_grid', '-8,8', 'for steps uniform in t')


def output_name(step: int, sampler: str, steps: int, guidance: float, palette: int = 0,
                guidance_logsnr: str = '', use_ema: bool = True, logsnr_end: float = 0.0,
                logsnr_grid: str = '', autoguidance: float = 0.0, guide_step: int = 0,
                refine_draws: int = 0, refine_logsnr: float = 4.0, refiner_steps: int = 0,
                logsnr_start: float = 0.0) -> str:
  """'step003500_ddpm200[from-8][e4][u-8to8]_g3[i-3to3][_ag0.5s400][_r4x8[ft500]][_p32][_raw]':
  what drew a set of sprites, for its file names (from-8: the first step from logSNR -8; e4: the
  last step from logSNR 4; u-8to8: steps uniform in logSNR over -8..8; ag0.5s400: autoguidance
  0.5 from step 400's weights; r4x8: the result averaged over 8 re-noisings at logSNR 4; ft500:
  by a refiner fine-tuned 500 steps; _raw: the trained weights, not their EMA)."""
  interval = ''
  if guidance and guidance_logsnr.strip():
    interval = 'i{:g}to{:g}'.format(*guidance_interval(guidance_logsnr))
  suffix = (f'_g{guidance:g}{interval}' if guidance else '')
  suffix += f'_ag{autoguidance:g}s{guide_step}' if autoguidance else ''
  suffix += f'_r{refine_logsnr:g}x{refine_draws}' if refine_draws else ''
  suffix += f'ft{refiner_steps}' if refine_draws and refiner_steps else ''
  suffix += f'_p{palette}' if palette else ''
  suffix += '' if use_ema else '_raw'
  ends = f'from{logsnr_start:g}' if logsnr_start else ''
  ends += f'e{logsnr_end:g}' if logsnr_end else ''
  span = logsnr_span(logsnr_grid)
  grid = 'u{:g}to{:g}'.format(*span) if span else ''
  return f'step{step:06d}_{sampler}{steps}{ends}{grid}{suffix}'
