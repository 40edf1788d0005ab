"""The reverse process as a GIF: x_t beside the predicted x_0 at each recorded sampler step."""
import numpy as np

from diffusion import samplers
from experiments.pictures import canvas

HEADS = ('x_t', 'predicted x_0')


def movie_frames(images: np.ndarray, movie: samplers.Movie, rows: int, upscale: int, sampler: str,
                 steps: int, after: str = '') -> list[np.ndarray]:
  """One frame per step the sampler recorded (uint8 sprites in `movie`), then the result, its
  title followed by `after` (what was done after the sampler, if anything)."""
  big = lambda x: canvas.upscale(canvas.grid(x, rows), upscale)
  frames = [canvas.labeled_grid([[big(x), big(x0)]], col_labels=HEADS,
                                 title=f'{sampler}: step {int(i) + 1}/{steps}, t={float(t):.2f}')
            for i, t, x, x0 in zip(movie.step, movie.t, movie.x_t, movie.x0)]
  frames.append(canvas.labeled_grid([[big(images)] * 2], col_labels=HEADS,
                                     title=f'{sampler}: done, t=0' + (f', {after}' if after else '')))
  return frames
