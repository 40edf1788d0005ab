"""Small image helpers shared by the sources: compositing, cropping, pixel-art resizing."""
import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Sprite:
  """One sprite as a source yields it, before deduplication and splitting."""
  image: np.ndarray  # uint8 [S, S, 3], RGB on white
  label: int         # class index, -1 when the source has no classes
  group: str         # sprites of one group (animation frames, augmented copies) never straddle the split
  origin: str        # where it came from: file, sheet/row/col, array index


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 4] -> uint8 [H, W, 3]: alpha-blend over white, as the course's sprites are."""
  rgb, alpha = rgba[..., :3].astype(np.float32), rgba[..., 3:].astype(np.float32) / 255.0
  return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def to_rgba(image: Image.Image) -> np.ndarray:
  return np.asarray(image.convert('RGBA'))


def crop_square_to_content(rgba: np.ndarray, margin: float = 1 / 16) -> np.ndarray:
  """The square around the non-transparent pixels, centred, with `margin` of its side added per edge."""
  ys, xs = np.nonzero(rgba[..., 3] > 0)
  if len(ys) == 0:
    return rgba
  cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
  side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
  side = int(np.ceil(side * (1 + 2 * margin)))
  top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
  canvas = np.zeros((side, side, 4), np.uint8)
  src = rgba[max(top, 0):top + side, max(left, 0):left + side]
  canvas[max(-top, 0):max(-top, 0) + src.shape[0], max(-left, 0):max(-left, 0) + src.shape[1]] = src
  return canvas


def resize_method(height: int, width: int, size: int) -> str:
  """'keep' at the target size, 'nearest' for exact integer multiples (crisp pixel art), else 'area'."""
  if (height, width) == (size, size):
    return 'keep'
  if height == width and height % size == 0:
    return 'nearest'
  return 'area'


def resize(image: np.ndarray, size: int, method: str | None = None) -> np.ndarray:
  """Square uint8 image -> [size, size, C] with the method `resize_method` picks (or the one given)."""
  method = method or resize_method(image.shape[0], image.shape[1], size)
  if method == 'keep':
    return image
  if method == 'nearest':
    step = image.shape[0] // size
    return image[step // 2::step, step // 2::step]
  resample = Image.Resampling.BOX
  return np.asarray(Image.fromarray(image).resize((size, size), resample))
