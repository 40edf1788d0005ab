"""PNG grids and GIFs of sprites, upscaled with nearest neighbour so pixels stay square."""
import os

import numpy as np
from PIL import Image


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def grid(images: np.ndarray, rows: int, pad: int = 1, background: int = 255) -> np.ndarray:
  """uint8 [N, S, S, 3] -> one uint8 image, `rows` rows filled left to right, top to bottom."""
  n, h, w, c = images.shape
  cols = -(-n // rows)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), background, np.uint8)
  for i, image in enumerate(images):
    r, k = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = image
  return out


def save_png(path: str, image: np.ndarray, factor: int = 1) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(upscale(image, factor)).save(path)


def save_gif(path: str, frames: list[np.ndarray], factor: int = 1, ms_per_frame: int = 120,
             hold_last_ms: int = 1500) -> None:
  """An endlessly looping GIF; the last frame (the result) stays up longer."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  images = [Image.fromarray(upscale(f, factor)) for f in frames]
  durations = [ms_per_frame] * (len(images) - 1) + [hold_last_ms]
  images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                 optimize=False)
