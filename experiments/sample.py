"""--mode=sample: restore the (EMA) weights, draw sprites, write grids, npz and a GIF.

Outputs in <workdir>/samples/, named <step>_<sampler><steps>[_g<guidance>]:
  .png  one row per class (then one row per mix), upscaled with nearest neighbour
  .npz  images uint8 [N, S, S, 3], labels int [N] (-1: unconditional or a mix),
        contexts float [N, K], class_names
  .gif  the denoising progression: x_t (left) and the predicted x0 (right) per step
  _sheet.png, _sheet.json  (sample.sheet) a game-ready sprite sheet on transparent pixels and its
        atlas: name, class, x, y, w, h of every sprite (see experiments/pictures/sprite_sheet.py)
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion import denoiser, samplers
from experiments import from_config
from experiments.data import dataset
from experiments.pictures import canvas, sprite_sheet
from experiments.runtime import checkpoints, parallel, state as state_lib


def parse_mix(spec: str, class_names) -> list[np.ndarray]:
  """'food:0.6,spell:0.4;0:1' -> context vectors; classes by name or index."""
  vectors = []
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    v = np.zeros(len(class_names), np.float32)
    for item in part.split(','):
      name, _, weight = item.partition(':')
      name = name.strip()
      k = int(name) if name.isdigit() else (class_names.index(name) if name in class_names else -1)
      if not 0 <= k < len(class_names):
        raise ValueError(f'sample.mix: unknown class {name!r} in {part!r}; classes: '
                         f'{", ".join(class_names)} (or their indices).')
      v[k] += float(weight or 1.0)
    vectors.append(v)
  return vectors


def contexts(class_names, per_class: int, mix: str = ''):
  """(context [N, K], labels [N]): per_class sprites of each class, then per_class of each mix."""
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


def make_sample_fn(model, config, mesh, frames: int, guidance: float | None = None):
  """jitted (params, keys [B], context [B, K]) -> x [B, S, S, 3] (and the movie), sharded on B.

  `guidance` overrides sample.guidance (the guidance strip compiles one function per scale).
  """
  s, d = config.sample, config.diffusion
  guidance = s.guidance if guidance is None else guidance
  logsnr_fn = from_config.logsnr_fn(d)
  size = config.data.image_size

  def fn(params, keys, context):
    denoise = denoiser.make_denoiser(
        model_fn=lambda x, t, c: model.apply(params, x, t, c), context=context,
        prediction=d.prediction, sigma_data=d.sigma_data, guidance=guidance,
        threshold=s.clip_x0, percentile=s.dynamic_percentile)
    return samplers.sample(denoise=denoise, grid=samplers.time_grid(logsnr_fn, s.steps), keys=keys,
                           shape=(size, size, 3), sampler=s.sampler, eta=s.eta, frames=frames)

  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  movie_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'data'))
  out = (shard, (movie_sharding, movie_sharding)) if frames else shard
  return jax.jit(fn, in_shardings=(rep, shard, shard), out_shardings=out)


def generate(fn, params, seed: int, context: np.ndarray, batch_size: int, mesh, frames: int,
             indices: np.ndarray | None = None):
  """Sprites for every context row, in batches; row r's noise derives from (seed, indices[r]).

  indices defaults to 0..N-1 (sprite i gets noise i). Repeating an index gives rows the same
  noise, so that only their contexts differ (the interpolation grid, the guidance strip).
  """
  n = len(context)
  indices = np.arange(n) if indices is None else np.asarray(indices)
  batch = -(-min(batch_size, n) // mesh.size) * mesh.size
  base = jax.random.key(seed)
  images, movies = [], []
  for start in range(0, n, batch):
    rows = np.minimum(np.arange(start, start + batch), n - 1)  # the last batch repeats row n - 1
    ctx = context[rows]
    keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.asarray(indices[rows]))
    out = fn(params, keys, jnp.asarray(ctx))
    x, movie = out if frames else (out, None)
    images.append(dataset.to_uint8(x))
    if frames:
      movies.append([dataset.to_uint8(m) for m in movie])
  images = np.concatenate(images)[:n]
  if not frames:
    return images, None
  xs, x0s = (np.concatenate([m[j] for m in movies], axis=1)[:, :n] for j in (0, 1))
  return images, (xs, x0s)


def dataset_classes(config, workdir: str) -> tuple[str, ...]:
  """The class names recorded by training, or read from the prepared dataset."""
  path = os.path.join(workdir, 'data.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return tuple(json.load(f)['class_names'])
  b = dataset.builder(config.data)
  if not b.is_prepared():
    b.download_and_prepare()
  return tuple(b.info.metadata['class_names'])


def restore_params(config, workdir: str, num_classes: int, mesh):
  """(step, params) of the latest checkpoint: the EMA weights unless sample.use_ema is off."""
  model = from_config.model(config.model, num_classes)
  tx = state_lib.optimizer(config.train)
  init = functools.partial(state_lib.init, model, tx, jax.random.key(0), config.data.image_size,
                           num_classes)
  rep = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                          jax.eval_shape(init))
  state = checkpoints.restore_latest(checkpoints.manager(workdir, 1), abstract)
  if state is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints: train first '
                            '(--mode=train), or point --workdir at a trained run.')
  return int(state.step), state.ema_params if config.sample.use_ema else state.params


def output_name(config, step: int) -> str:
  s = config.sample
  guidance = f'_g{s.guidance:g}' if s.guidance else ''
  return f'step{step:06d}_{s.sampler}{s.steps}{guidance}'


def movie_frames(images, movie, rows: int, upscale: int, sampler: str, steps: int):
  """The denoising GIF: x_t beside the predicted x0 at each recorded step, then the result."""
  xs, x0s = movie
  recorded = np.round(np.linspace(0, steps - 1, len(xs))).astype(int)  # as samplers.sample picks
  times = np.linspace(1.0, 0.0, steps + 1)[recorded]  # samplers.time_grid's t
  big = lambda x: canvas.upscale(canvas.grid(x, rows), upscale)
  heads = ('x_t', 'predicted x_0')
  frames = [canvas.labelled_grid([[big(x), big(x0)]], col_labels=heads,
                                   title=f'{sampler}: step {i + 1}/{steps}, t={t:.2f}')
            for i, t, x, x0 in zip(recorded, times, xs, x0s)]
  frames.append(canvas.labelled_grid([[big(images)] * 2], col_labels=heads,
                                       title=f'{sampler}: done, t=0'))
  return frames


def write_outputs(path_stem: str, images, labels, context, class_names, rows: int, movie,
                  upscale: int, sampler: str = '', steps: int = 1) -> None:
  canvas.save_png(path_stem + '.png', canvas.grid(images, rows), upscale)
  np.savez_compressed(path_stem + '.npz', images=images, labels=labels, contexts=context,
                      class_names=np.asarray(class_names, dtype=str))
  if movie is not None:
    canvas.save_gif(path_stem + '.gif', movie_frames(images, movie, rows, upscale, sampler, steps))


def write_sheet(path_stem: str, images, class_names, sample_cfg) -> str:
  """The sprite sheet and its atlas, one row per class (and mix) as in the grid."""
  s = sample_cfg
  names, classes = sprite_names(class_names, s.per_class, s.mix)
  return sprite_sheet.write_sheet(path_stem, images, names, classes, columns=s.per_class,
                            colors=s.sheet_colors, factor=s.sheet_upscale, tolerance=s.sheet_key)


def run(config, workdir: str, *, params=None, step: int | None = None,
        class_names: tuple[str, ...] | None = None) -> str:
  """Draw the configured grid and write it; returns the path stem of the outputs."""
  from_config.validate(config)
  class_names = class_names if class_names is not None else dataset_classes(config, workdir)
  mesh = parallel.make_mesh()
  if params is None:
    step, params = restore_params(config, workdir, len(class_names), mesh)
  s = config.sample
  context, labels, rows = contexts(class_names, s.per_class, s.mix)
  model = from_config.model(config.model, len(class_names))
  frames = s.gif_frames if s.gif else 0
  fn = make_sample_fn(model, config, mesh, frames)
  images, movie = generate(fn, params, s.seed, context, s.batch_size, mesh, frames)
  stem = os.path.join(workdir, 'samples', output_name(config, step or 0))
  if jax.process_index() == 0:
    write_outputs(stem, images, labels, context, class_names, rows, movie, s.upscale, s.sampler,
                  s.steps)
    if s.sheet:
      write_sheet(stem, images, class_names, s)
    logging.info('Wrote %s.png (%d sprites, %d rows)', stem, len(images), rows)
  return stem
