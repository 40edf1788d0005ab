"""--mode=show: pictures that explain diffusion and what the context controls.

Writes into <workdir>/show/:
  forward.png, forward.gif  training sprites dissolving into noise under the configured
                            schedule (needs only the data; see experiments/pictures/forward_process.py)
and, once the workdir holds a checkpoint:
  classes.png    one row per class, labeled (the same sprites as the sample grid)
  mix.png        class A -> class B: columns mix the contexts as (1 - w) A + w B, w = 0 -> 1;
                 each row keeps one starting noise, so only the context changes along it
  guidance.png   one row per class, columns the guidance scales of show.guidance_scales;
                 each row keeps one starting noise
"""
import math
import os

import numpy as np
from absl import logging

from experiments import from_config
from experiments.data import dataset
from experiments.pictures import canvas, forward_process
from experiments.runtime import drawing, files, hosts, parallel, trained_with


def parse_scales(spec: str) -> list[float]:
  try:
    scales = [float(x) for x in spec.split(',') if x.strip()]
  except ValueError:
    scales = []
  if not scales or not all(math.isfinite(w) for w in scales):
    raise ValueError(f'show.guidance_scales={spec!r}: want finite numbers separated by commas, '
                     'e.g. 0,0.5,1,2,4.')
  return scales


def class_index(spec: str, class_names, default: int) -> int:
  """A class named by name or index; '' gives `default`. Unknown names list the valid ones."""
  if not spec:
    return default
  index = spec.isascii() and spec.isdigit()  # not str.isdigit alone: it accepts '²'
  k = int(spec) if index else class_names.index(spec) if spec in class_names else -1
  if not 0 <= k < len(class_names):
    raise ValueError(f'Unknown class {spec!r}; classes: {", ".join(class_names)} (or their indices).')
  return k


def _drawer(config, mesh, params, num_classes: int):
  """draw(context [N, K], indices [N], guidance) -> uint8 sprites; one compiled fn per guidance."""
  model = from_config.model(config.model, num_classes)
  fns = {}

  def draw(context, indices=None, guidance=None):
    guidance = config.sample.guidance if guidance is None else guidance
    if guidance not in fns:
      fns[guidance] = drawing.make_sample_fn(model, from_config.sampling(config, guidance), mesh, 0)
    return drawing.generate(fns[guidance], params, config.sample.seed, context,
                            config.sample.batch_size, mesh, 0, indices=indices)[0]
  return draw


def _tiles(images: np.ndarray, rows: int, factor: int) -> list[list[np.ndarray]]:
  cols = len(images) // rows
  return [[canvas.upscale(images[r * cols + c], factor) for c in range(cols)] for r in range(rows)]


def _settings(config) -> str:
  sample_cfg = config.sample
  interval = sample_cfg.guidance_logsnr.strip()
  grid = sample_cfg.logsnr_grid.strip()
  return f'{sample_cfg.sampler}, {sample_cfg.steps} steps' + (
      f' from logSNR {sample_cfg.logsnr_start:g}' if sample_cfg.logsnr_start else '') + (
      f' uniform in logSNR {grid}' if grid else '') + (
      f', the last from logSNR {sample_cfg.logsnr_end:g}' if sample_cfg.logsnr_end else '') + (
      f', guided at logSNR {interval}' if interval else '')


def classes_picture(draw, config, class_names) -> np.ndarray:
  sample_cfg = config.sample
  context, _, _ = drawing.contexts(class_names, sample_cfg.per_class)
  images = draw(context)
  return canvas.labeled_grid(
      _tiles(images, len(class_names), sample_cfg.upscale), row_labels=class_names,
      title=f'One row per class ({_settings(config)}, guidance {sample_cfg.guidance:g})')


def mix_picture(draw, config, class_names) -> np.ndarray:
  """Rows: starting noises; columns: context (1 - w) A + w B for w from 0 to 1."""
  show = config.show
  a, b = class_index(show.class_a, class_names, 0), class_index(show.class_b, class_names, 1)
  weights = np.linspace(0.0, 1.0, show.mix_steps)
  onehot = np.eye(len(class_names), dtype=np.float32)
  context = np.stack([(1 - w) * onehot[a] + w * onehot[b] for _ in range(show.mix_rows) for w in weights])
  indices = np.repeat(np.arange(show.mix_rows), len(weights))  # one noise along each row
  images = draw(context, indices)
  return canvas.labeled_grid(
      _tiles(images, show.mix_rows, config.sample.upscale), col_labels=[f'w={w:.2f}' for w in weights],
      title=f'{class_names[a]} -> {class_names[b]}\ncontext = (1 - w) {class_names[a]} + w {class_names[b]}',
      footer='each row starts from one noise: only the context changes along it')


def guidance_picture(draw, config, class_names) -> np.ndarray:
  """Rows: classes, each with one starting noise; columns: guidance scales."""
  scales = parse_scales(config.show.guidance_scales)
  k = len(class_names)
  per_scale = [draw(dataset.context(np.arange(k), k), np.arange(k), w) for w in scales]
  images = np.stack(per_scale, axis=1).reshape((-1,) + per_scale[0].shape[1:])
  return canvas.labeled_grid(
      _tiles(images, k, config.sample.upscale), row_labels=class_names,
      col_labels=[f'w={w:g}' for w in scales],
      title=f'Classifier-free guidance (1 + w) cond - w uncond ({_settings(config)})',
      footer='each row starts from one noise: only w changes along it')


def run(config, workdir: str) -> list[str]:
  """Write the pictures into <workdir>/show; returns their paths."""
  from_config.validate(config)
  parse_scales(config.show.guidance_scales)
  out = os.path.join(workdir, 'show')
  main = files.is_writer()
  written = []
  data = dataset.load(config.data)  # in every process: the first load builds the dataset once
  with hosts.then_barrier('forward process written'):
    if main:
      images = forward_process.pick_sprites(data, config.show.sprites)
      written += forward_process.write(
          images, out, logsnr_fn=from_config.logsnr_fn(config.diffusion),
          schedule=config.diffusion.schedule, seed=config.seed, factor=config.sample.upscale,
          frames=config.show.forward_frames)
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    logging.info('No checkpoint in %s: wrote only the forward process.', workdir)
    return written
  trained_with.check(config, workdir, trained_with.DRAWING, 'drawing from it')
  class_names = dataset.recorded_class_names(config.data, workdir)
  if len(class_names) < 2:  # nothing to steer between: the forward process is all there is
    logging.info('%s was trained on %s: the context pictures need two classes; wrote only the '
                 'forward process.', workdir, f'one class ({class_names[0]})' if class_names
                 else 'no classes')
    return written
  for spec, default in ((config.show.class_a, 0), (config.show.class_b, 1)):
    class_index(spec, class_names, default)  # a typo fails before any sampling
  mesh = parallel.make_mesh()
  _, params = drawing.weights(workdir, mesh, config.sample,
                              **from_config.state_kwargs(config, len(class_names)))
  draw = _drawer(config, mesh, params, len(class_names))
  for name, make in (('classes', classes_picture), ('mix', mix_picture),
                     ('guidance', guidance_picture)):
    picture = make(draw, config, list(class_names))
    if main:
      written.append(os.path.join(out, name + '.png'))
      canvas.save_png(written[-1], picture)
  if main:
    logging.info('Wrote %s', ', '.join(written))
  hosts.barrier('show written')
  return written
