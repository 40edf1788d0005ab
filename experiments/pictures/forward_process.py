"""The forward process as pictures: training sprites dissolving into noise like ink in water.

x_t = alpha(t) x0 + sigma(t) eps under the configured schedule, with one fixed eps per sprite
(from (seed, sprite)), so every column and GIF frame shows the same noise taking over. The
shown times are chosen by logSNR, not spaced evenly in t: 16x16 sprites are unreadable from
logSNR ~ -1.5 on, and a schedule such as cosine spends a third of its time below that.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import gaussian
from experiments.data import dataset
from experiments.pictures import canvas

# What a viewer can still make out above each logSNR (judged on 16x16 emoji, clipped to [-1, 1]).
BANDS = ((4.0, 'clearly the sprite'), (1.5, 'details'), (-1.5, 'outline'), (-np.inf, 'no idea'))
# The strip's columns: t = 0, logSNR levels spread over the bands, and t = 1.
STRIP_LOGSNR = (np.inf, 5.0, 3.0, 2.0, 1.0, 0.0, -1.0, -3.0, -np.inf)


def band(logsnr: float) -> str:
  return next(word for floor, word in BANDS if logsnr >= floor)


def _first_times(logsnr_fn, targets, resolution: int = 8192) -> tuple[np.ndarray, float]:
  """(first t on a fine grid where logsnr(t) <= target, for each target; logsnr(1)).

  logSNR falls with t; a target of +inf gives t = 0, one never reached gives t = 1.
  """
  grid = np.linspace(0.0, 1.0, resolution + 1)
  values = np.asarray(logsnr_fn(jnp.asarray(grid, jnp.float32)), np.float64)
  reached = values[None, :] <= np.asarray(targets, np.float64)[:, None]
  return np.where(reached.any(axis=1), grid[np.argmax(reached, axis=1)], 1.0), values[-1]


def times_at(logsnr_fn, targets) -> np.ndarray:
  """Increasing times where logsnr reaches each target, ending with t = 1.

  Targets the schedule reaches only at t = 1 or never are dropped, so every schedule's strip
  runs from the clean sprite to its own noisiest level without repeating a column.
  """
  times, end = _first_times(logsnr_fn, targets)
  kept = [t for t, target in zip(times, targets) if end < target]
  return np.asarray(sorted(set(kept)) + [1.0])


def noisy(x0: np.ndarray, logsnr: np.ndarray, seed: int) -> np.ndarray:
  """x_t [T, N, S, S, C] (float32) of each sprite x0 [N, S, S, C] at each logSNR [T].

  Sprite i's eps derives from (seed, i) alone and is shared by every t.
  """
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.arange(len(x0)))
  eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:]))(keys)
  x_t = jax.vmap(lambda l: gaussian.diffuse(x0=jnp.asarray(x0), eps=eps, logsnr=l))(
      jnp.asarray(logsnr, jnp.float32))
  return np.asarray(x_t)


def snr_text(logsnr: float) -> str:
  snr = float(np.exp(np.float64(logsnr)))
  return 'inf' if snr == np.inf else f'{snr:.0f}' if snr >= 100 else f'{snr:.2g}'


def terminal_note(logsnr_1: float) -> str:
  """What x_1 really is under this schedule, said plainly."""
  if np.exp(np.float64(logsnr_1)) == 0:
    return 'At t=1 SNR=0:\nx_1 is pure N(0, I) noise,\nthe sprite is gone.'
  alpha, sigma = (float(np.sqrt(1 / (1 + np.exp(sign * np.float64(logsnr_1))))) for sign in (-1, 1))
  return (f'At t=1 SNR={snr_text(logsnr_1)} > 0:\nx_1 = {alpha:.3g} x_0 + {sigma:.4g} eps, not pure noise\n'
          '(diffusion.zero_terminal_snr=True fixes it)')


def pick_sprites(data: dataset.SpriteData, count: int) -> np.ndarray:
  """The first training sprite of each of the first `count` classes (or the first `count`)."""
  if data.num_classes == 0:
    return data.images[:count]
  first = [int(np.flatnonzero(data.labels == k)[0]) for k in range(data.num_classes)
           if np.any(data.labels == k)]
  return data.images[first[:count]]


def _run_end(words: list[str], start: int) -> int:
  """One past the last column of the run of equal words that starts at `start`."""
  end = start
  while end < len(words) and words[end] == words[start]:
    end += 1
  return end


def _tile(x: np.ndarray, factor: int) -> np.ndarray:
  return canvas.upscale(dataset.to_uint8(x), factor)


def strip(images: np.ndarray, logsnr_fn, schedule: str, seed: int, factor: int) -> np.ndarray:
  """The ink-drop picture: one row per sprite, one column per noise level, labeled."""
  times = times_at(logsnr_fn, STRIP_LOGSNR)
  logsnr = np.asarray(logsnr_fn(jnp.asarray(times, jnp.float32)), np.float64)
  x_t = noisy(dataset.to_model(images), logsnr, seed)
  words = [band(l) for l in logsnr]
  spans = [(k, _run_end(words, k), w) for k, w in enumerate(words) if k == 0 or words[k - 1] != w]
  tiles = [[_tile(x_t[j, i], factor) for j in range(len(times))] for i in range(len(images))]
  labels = [f't={t:.2f}\nSNR={snr_text(l)}' for t, l in zip(times, logsnr)]
  return canvas.labeled_grid(
      tiles, col_labels=labels, spans=spans, footer=terminal_note(logsnr[-1]),
      title=f'Forward process q(x_t | x_0), {schedule} schedule')


def gif_frames(images: np.ndarray, logsnr_fn, schedule: str, seed: int, factor: int, count: int):
  """`count` frames of the sprites drifting from t = 0 to t = 1, evenly spaced in logSNR."""
  if count < 2:
    raise ValueError(f'show.forward_frames={count}: need at least 2 (t = 0 and t = 1).')
  end = float(logsnr_fn(jnp.float32(1.0)))
  # count - 2 levels from logSNR 6 down to, not including, the end (or -6: all noise beyond).
  levels = np.linspace(6.0, max(end, -6.0), count - 1)[:-1]
  times = np.concatenate([[0.0], _first_times(logsnr_fn, levels)[0], [1.0]])
  logsnr = np.asarray(logsnr_fn(jnp.asarray(times, jnp.float32)), np.float64)
  x_t = noisy(dataset.to_model(images), logsnr, seed)
  frames = []
  for j, (t, l) in enumerate(zip(times, logsnr)):
    # The note on every frame keeps the frames one width, so the sprites do not jump.
    frames.append(canvas.labeled_grid(
        [[_tile(x, factor) for x in x_t[j]]], title=f'{schedule} schedule',
        footer=f't={t:.2f}  SNR={snr_text(l)}\n{band(l)}\n\n{terminal_note(logsnr[-1])}'))
  return frames


def write(images: np.ndarray, out_dir: str, *, logsnr_fn, schedule: str, seed: int, factor: int,
          frames: int) -> tuple[str, str]:
  """<out_dir>/forward.png (the strip) and forward.gif of `images`; returns their paths."""
  png, gif = os.path.join(out_dir, 'forward.png'), os.path.join(out_dir, 'forward.gif')
  canvas.save_png(png, strip(images, logsnr_fn, schedule, seed, factor))
  # The GIF shows a single row, so it can afford bigger pixels than the strip.
  canvas.save_gif(gif, gif_frames(images, logsnr_fn, schedule, seed, factor + 2, frames),
                  ms_per_frame=150)
  return png, gif
