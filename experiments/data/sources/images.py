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


WIDE_GRAY = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')  # 16-bit grayscale PNGs open as these


def to_rgba(image: Image.Image) -> np.ndarray:
  """uint8 [H, W, 4]. 16-bit grayscale is scaled to 8 bits (PIL's convert would clip it at 255:
  white everywhere), its tRNS transparent value kept transparent."""
  if image.mode not in WIDE_GRAY:
    return np.asarray(image.convert('RGBA'))
  values = np.asarray(image).astype(np.int64)
  gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
  alpha = np.full_like(gray, 255)
  if isinstance(image.info.get('transparency'), int):
    alpha[values == image.info['transparency']] = 0
  return np.stack([gray, gray, gray, alpha], axis=-1)


def crop_square_to_content(rgba: np.ndarray, margin: float = 1 / 16) -> np.ndarray:
  """The square around the non-transparent pixels, centered, with `margin` of its side added per edge."""
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


def visible_pixels(rgb: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W, 3] -> [...]: how many pixels are not pure white (after compositing)."""
  return np.sum(np.any(rgb != 255, axis=-1), axis=(-2, -1))


def tiles(image: np.ndarray, size: int):
  """(row, col, tile) for every whole size x size tile of a sheet, row by row (partial edges left out)."""
  for row in range(image.shape[0] // size):
    for col in range(image.shape[1] // size):
      yield row, col, image[row * size:(row + 1) * size, col * size:(col + 1) * size]


def fit_method(height: int, width: int, size: int) -> str:
  """`resize_method`, plus 'upscale' (nearest, by a whole factor) for smaller sprites whose side
  divides `size`.

  Raises ValueError, with the reason, for sprites that would be distorted (not square) or blurred
  (grown by a fraction).
  """
  if height < 1 or width < 1:
    raise ValueError(f'{width}x{height} is empty')
  if height != width:
    raise ValueError(f'{width}x{height} is not square')
  if height < size and size % height:
    raise ValueError(f'{width}x{height} is smaller than {size}x{size} and {height} does not '
                     f'divide {size}')
  return 'upscale' if height < size else resize_method(height, width, size)


def is_enlarged(image: np.ndarray, size: int) -> bool:
  """Whether a square image is a size x size sprite enlarged by a whole factor (every factor x
  factor block one color): only then does keeping one pixel per block lose nothing."""
  factor = image.shape[0] // size
  blocks = image.reshape(size, factor, size, factor, -1)
  return bool(np.all(blocks == blocks[:, :1, :, :1]))


def fit(image: np.ndarray, size: int, method: str) -> np.ndarray:
  """Square uint8 image -> [size, size, C] with a method from `fit_method`."""
  if method == 'upscale':
    factor = size // image.shape[0]
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
  return resize(image, size, method)
