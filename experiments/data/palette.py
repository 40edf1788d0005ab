"""Small palettes: the colors a sprite set is drawn with, and mapping pixels onto them.

Pixel art lives on a few colors (DawnLike: 18 in all), so a model's near-miss colors can be
snapped to the training set's own (sample.palette). Pure numpy; deterministic.
"""
import numpy as np

FIT_PIXELS = 50_000  # k-means sees at most this many pixels (evenly strided): enough for 256 colors


def median_cut(pixels: np.ndarray, k: int) -> np.ndarray:
  """<= k colors (float [k, 3]): split the box of widest channel range at its median, k - 1 times."""
  boxes = [pixels.astype(np.float64)]
  while len(boxes) < k:
    ranges = [np.ptp(b, axis=0).max() if len(b) > 1 else -1.0 for b in boxes]
    widest = int(np.argmax(ranges))
    if ranges[widest] <= 0:
      break  # every box holds one color: fewer than k colors exist
    box = boxes.pop(widest)
    box = box[np.argsort(box[:, np.argmax(np.ptp(box, axis=0))], kind='stable')]
    boxes += [box[:len(box) // 2], box[len(box) // 2:]]
  return np.stack([b.mean(axis=0) for b in boxes])


def pack(pixels: np.ndarray) -> np.ndarray:
  """int32 [...]: each uint8 RGB pixel [..., 3] as one number, ordered as its (r, g, b)."""
  r, g, b = (pixels[..., c].astype(np.int32) for c in range(3))
  return (r << 16) | (g << 8) | b


def _unpacked(packed: np.ndarray) -> np.ndarray:
  """uint8 [M, 3]: the pixels of pack's numbers [M]."""
  return np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)


def distinct(pixels: np.ndarray) -> np.ndarray:
  """The distinct colors ([K, 3], sorted) of pixels [M, 3], as np.unique(pixels, axis=0) gives them.

  uint8 pixels are packed into one number each and sorted as numbers, not as rows: about 10 s
  down to 1.5 on the 19M pixels of a course-sized training split."""
  if pixels.dtype != np.uint8:
    return np.unique(pixels, axis=0)
  return _unpacked(np.unique(pack(pixels)))


def nearest(pixels: np.ndarray, colors: np.ndarray, chunk: int = 16_384) -> np.ndarray:
  """Index [M] of each pixel's nearest color (Euclidean in RGB), in chunks of pixels.

  uint8 pixels are matched once per distinct color: a sprite set repeats a few thousand colors
  over millions of pixels."""
  if pixels.dtype == np.uint8 and len(pixels):
    keys, inverse = np.unique(pack(pixels), return_inverse=True)
    return nearest(_unpacked(keys).astype(np.float64), colors, chunk)[inverse]
  pixels, colors = pixels.astype(np.float64), colors.astype(np.float64)
  return np.concatenate([
      np.argmin(((pixels[i:i + chunk, None, :] - colors[None]) ** 2).sum(-1), axis=1)
      for i in range(0, len(pixels), chunk)] or [np.zeros(0, np.int64)])


def kmeans(pixels: np.ndarray, k: int, iterations: int = 10) -> np.ndarray:
  """k-means colors (uint8 [<= k, 3]) of pixels [M, 3], started from median cut: deterministic."""
  pixels = pixels.astype(np.float64)
  centers = median_cut(pixels, k)
  for _ in range(iterations):
    index = nearest(pixels, centers)
    centers = np.stack([pixels[index == j].mean(0) if np.any(index == j) else c
                        for j, c in enumerate(centers)])
  return np.unique(np.clip(np.round(centers), 0, 255).astype(np.uint8), axis=0)


def fit(images: np.ndarray, k: int) -> np.ndarray:
  """The colors of uint8 sprites [N, S, S, 3]: all of them if there are at most k, else k-means."""
  pixels = images.reshape(-1, 3)
  colors = distinct(pixels)
  if len(colors) <= k:
    return colors
  return kmeans(pixels[::max(1, len(pixels) // FIT_PIXELS)], k)


def apply(images: np.ndarray, colors: np.ndarray) -> np.ndarray:
  """Every pixel replaced by its nearest color of `colors` (uint8 [P, 3])."""
  flat = images.reshape(-1, 3)
  return colors[nearest(flat, colors)].reshape(images.shape).astype(np.uint8)
