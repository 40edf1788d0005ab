"""The memorization audit: how close is each sample to the training sprites it could have copied?

Each sample is matched to its nearest training sprite, mirror images included (a flipped copy
is still a copy), in pixel space (mean |difference| per channel, [0, 255] units) and in the
feature network's space. Held-out real sprites get the same treatment: they were drawn by
people, not copied, so their distances are the baseline a novel sample should look like.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from experiments.pictures import canvas
from experiments.quality import metrics

PERCENTILES = (0, 1, 5, 25, 50, 75, 95)
# Held-out sprites the baseline is measured on: all of a smaller test split (emoji and OpenMoji
# 162, DawnLike 222), a fixed 2,000 of a larger one. On a course-sized stand-in (docs/results.md),
# matching all 9,459 of its test sprites to 150,242 training sprites and mirrors took 37 s on 2
# cores; the pixel p5 of the fixed 2,000 is 9.43 against all 9,459's 9.47 (over 30 draws of 2,000,
# seeds 0-29: 9.51 on average, standard deviation 0.32, about 3%).
BASELINE_SPRITES = 2_000


def baseline_rows(n: int) -> np.ndarray:
  """Indices of the n held-out sprites the baseline measures, in order: all, or BASELINE_SPRITES of
  them by a fixed seed (0, not eval.seed: every evaluation of a set, whatever its seed, measures the
  same ones, so their audits compare)."""
  if n <= BASELINE_SPRITES:
    return np.arange(n)
  return np.sort(np.random.default_rng(0).choice(n, BASELINE_SPRITES, replace=False))


def nearest_training(images, feats, train_images, train_feats_mirrored, block: int) -> dict:
  """Each query's nearest of the 2N training sprites (index i + N = sprite i mirrored)."""
  px_index, px_dist = metrics.nearest_mad(images, metrics.with_mirrors(train_images))
  f_index, f_dist = metrics.nearest_l2(feats, train_feats_mirrored, block)
  return {k: np.asarray(v) for k, v in (('pixel_index', px_index), ('pixel_distance', px_dist),
                                         ('feature_index', f_index), ('feature_distance', f_dist))}


def _percentiles(values: np.ndarray) -> dict[str, float]:
  return {f'p{p}': round(float(np.percentile(values, p)), 4) for p in PERCENTILES}


def summarize(nearest: dict, num_train: int, near_copy: float) -> dict:
  rates = metrics.copy_rates(nearest['pixel_distance'], near_copy)
  return {'count': int(len(nearest['pixel_distance'])),
          'exact_copy_rate': float(rates['exact']), 'near_copy_rate': float(rates['near']),
          'mirrored_share': float(np.mean(nearest['pixel_index'] >= num_train)),
          'pixel_distance': _percentiles(nearest['pixel_distance']),
          'feature_distance': _percentiles(nearest['feature_distance'])}


def report(samples: dict, heldout: dict, num_train: int, near_copy: float) -> dict:
  """Both summaries, and how many samples sit closer to the training set than nearly all held-out
  sprites do (5% expected of a model whose sprites are as new as held-out ones)."""
  out = {'near_copy_threshold': near_copy,
         'samples': summarize(samples, num_train, near_copy),
         'real_heldout': summarize(heldout, num_train, near_copy)}
  for space in ('pixel', 'feature'):
    p5 = np.percentile(heldout[f'{space}_distance'], 5)
    out[f'{space}_closer_than_heldout_p5'] = float(np.mean(samples[f'{space}_distance'] < p5))
  return out


def _label(draw, xy, text: str, font) -> None:
  draw.text(xy, text, fill=(0, 0, 0), font=font)


def nearest_picture(images, train_images, nearest: dict, shown: int, upscale: int = 4,
                    columns: int = 3) -> np.ndarray:
  """The `shown` samples closest to a training sprite: sample | its nearest | pixel distance.

  The nearest is drawn as matched, so a mirrored match appears mirrored and says so.
  """
  order = np.argsort(nearest['pixel_distance'], kind='stable')[:shown]
  mirrored = metrics.with_mirrors(train_images)
  size = images.shape[1] * upscale
  cell_w, cell_h = 3 * size + 8, size + 6
  rows, top = -(-len(order) // columns), 20
  page = Image.new('RGB', (columns * cell_w + 4, top + rows * cell_h + 4), (255, 255, 255))
  draw = ImageDraw.Draw(page)
  font = ImageFont.load_default(size=max(10, size // 5))
  _label(draw, (4, 3), 'sample | nearest training sprite | mean |pixel difference| (0-255)', font)
  num_train = len(train_images)
  for n, i in enumerate(order):
    x, y = 4 + (n % columns) * cell_w, top + (n // columns) * cell_h
    j = int(nearest['pixel_index'][i])
    for k, sprite in enumerate((images[i], np.asarray(mirrored[j]))):
      page.paste(Image.fromarray(canvas.upscale(sprite, upscale)), (x + k * (size + 2), y))
    d = float(nearest['pixel_distance'][i])
    tag = ' '.join(t for t, on in (('copy', d == 0), ('mirror', j >= num_train)) if on)
    _label(draw, (x + 2 * size + 6, y + 2), f'{d:.2f}', font)
    _label(draw, (x + 2 * size + 6, y + size // 2), tag, font)
  return np.asarray(page)
