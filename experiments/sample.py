"""--mode=sample: restore the (EMA) weights, draw sprites, write grids, npz and a GIF.

Outputs in <workdir>/samples/, named <step>_<sampler><steps>[_g<guidance>[i<lo>to<hi>]][_p<k>][_raw]
(runtime/drawing.output_name):
  .png  one row per class (then one row per mix), upscaled with nearest neighbor
  .npz  images uint8 [N, S, S, 3], labels int [N] (-1: unconditional or a mix),
        contexts float [N, K], class_names
  .gif  the denoising progression: x_t (left) and the predicted x0 (right) per step
  _sheet.png, _sheet.json  (sample.sheet) a game-ready sprite sheet on transparent pixels and its
        atlas: name, class, x, y, w, h of every sprite (see experiments/pictures/sprite_sheet.py)
"""
import os

import numpy as np
from absl import logging

from experiments import from_config
from experiments.data import dataset, palette
from experiments.pictures import canvas, denoising, sprite_sheet
from experiments.runtime import drawing, files, hosts, parallel, refiner, trained_with


def output_name(config, step: int, guide_step: int | None = None,
                refiner_steps: int | None = None) -> str:
  """drawing.output_name, plus the settings that change the draws when they leave their defaults
  (ddim's eta, the x0 clipping, the sampling seed): two draws of one model never share a file.
  guide_step: the guide that drew them (drawing.guide_step), if not sample.guide_step.
  refiner_steps: the refiner's that refined them (drawing.refiner_steps), if not the one a
  finished run of this config has."""
  sample_cfg = config.sample
  guide = sample_cfg.guide_step if guide_step is None else guide_step
  if refiner_steps is None:
    refiner_steps = config.train.refiner_steps if sample_cfg.refiner else 0
  name = drawing.output_name(step, sample_cfg.sampler, sample_cfg.steps, sample_cfg.guidance,
                             sample_cfg.palette, sample_cfg.guidance_logsnr, sample_cfg.use_ema,
                             sample_cfg.logsnr_end, sample_cfg.logsnr_grid,
                             sample_cfg.autoguidance, guide, sample_cfg.refine_draws,
                             sample_cfg.refine_logsnr, refiner_steps, sample_cfg.logsnr_start)
  if sample_cfg.sampler == 'ddim' and sample_cfg.eta:
    name += f'_eta{sample_cfg.eta:g}'
  if sample_cfg.clip_x0 != 'clip':
    dynamic = sample_cfg.clip_x0 == 'dynamic' and sample_cfg.dynamic_percentile != 0.995
    name += f'_c{sample_cfg.clip_x0}' + (f'{sample_cfg.dynamic_percentile:g}' if dynamic else '')
  return name + (f'_seed{sample_cfg.seed}' if sample_cfg.seed else '')


def snap_to_palette(images: np.ndarray, train_images: np.ndarray, k: int) -> np.ndarray:
  """sample.palette: every pixel moved to the nearest of the training set's (<= k) colors."""
  return palette.apply(images, palette.fit(train_images, k)) if k else images


def write_outputs(path_stem: str, images, labels, context, class_names, rows: int, movie,
                  upscale: int, sampler: str = '', steps: int = 1, after: str = '') -> None:
  canvas.save_png(path_stem + '.png', canvas.grid(images, rows), upscale)
  np.savez_compressed(path_stem + '.npz', images=images, labels=labels, contexts=context,
                      class_names=np.asarray(class_names, dtype=str))
  if movie is not None:
    canvas.save_gif(path_stem + '.gif',
                    denoising.movie_frames(images, movie, rows, upscale, sampler, steps, after))


def _after_sampler(sample_cfg, refiner_steps: int = 0) -> str:
  """What changed the sprites after the sampler's last step, for the movie's last frame."""
  done = []
  if sample_cfg.refine_draws:
    by = ', by the refiner' if refiner_steps else ''
    done.append(f'refined ({sample_cfg.refine_draws} x logSNR {sample_cfg.refine_logsnr:g}{by})')
  if sample_cfg.palette:
    done.append(f'snapped to {sample_cfg.palette} colors')
  return ' and '.join(done)


def write_sheet(path_stem: str, images, class_names, sample_cfg) -> str:
  """The sprite sheet and its atlas, one row per class (and mix) as in the grid."""
  names, classes = drawing.sprite_names(class_names, sample_cfg.per_class, sample_cfg.mix)
  return sprite_sheet.write_sheet(
      path_stem, images, names, classes, columns=sample_cfg.per_class,
      colors=sample_cfg.sheet_colors, factor=sample_cfg.sheet_upscale, tolerance=sample_cfg.sheet_key)


def run(config, workdir: str, *, params=None, step: int | None = None,
        class_names: tuple[str, ...] | None = None) -> str:
  """Draw the configured grid and write it; returns the path stem of the outputs."""
  from_config.validate(config)
  if params is None:  # the workdir's own weights
    trained_with.check(config, workdir, trained_with.DRAWING, 'drawing from it')
  class_names = (class_names if class_names is not None
                 else dataset.recorded_class_names(config.data, workdir))
  mesh = parallel.make_mesh()
  sample_cfg = config.sample
  step, params = drawing.weights(workdir, mesh, sample_cfg, params=params, step=step,
                                 **from_config.state_kwargs(config, len(class_names)))
  context, labels, rows = drawing.contexts(class_names, sample_cfg.per_class, sample_cfg.mix)
  model = from_config.model(config.model, len(class_names))
  frames = sample_cfg.gif_frames if sample_cfg.gif else 0
  fn = drawing.make_sample_fn(model, from_config.sampling(config), mesh, frames)
  images, movie = drawing.generate(fn, params, sample_cfg.seed, context, sample_cfg.batch_size,
                                   mesh, frames)
  if sample_cfg.palette:
    images = snap_to_palette(images, dataset.load(config.data, 'train').images, sample_cfg.palette)
  refined_by = refiner.steps_for(workdir, step, sample_cfg)
  stem = os.path.join(workdir, 'samples', output_name(
      config, step or 0, drawing.guide_step(workdir, sample_cfg), refined_by))
  with hosts.then_barrier('samples written'):
    if files.is_writer():
      write_outputs(stem, images, labels, context, class_names, rows, movie, sample_cfg.upscale,
                    sample_cfg.sampler, sample_cfg.steps, _after_sampler(sample_cfg, refined_by))
      if sample_cfg.sheet:
        write_sheet(stem, images, class_names, sample_cfg)
      logging.info('Wrote %s.png (%d sprites, %d rows)', stem, len(images), rows)
  return stem
