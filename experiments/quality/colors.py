"""Color use: do samples spread their pixels over the set's colors as real sprites do?

FID in a 64-d feature space and grain (grain.py) both miss a model that draws clean, flat sprites
in too few colors: trained with the l1 norm on DawnLike, one drew 67-70% of its non-background
pixels in its 3 commonest colors, real sprites 50%, with FID at the floor and grain below real
(docs/ablations.md). Here every non-background pixel is mapped to the nearest of the training
sprites' colors (k-means to PALETTE_SIZE: all of DawnLike's 18, the main shades of emoji), and
  distance   the total variation between the samples' and held-out sprites' shares of those
             colors (0 = the same mix, 1 = no color in common), next to the training sprites'
             own distance to the held-out ones (what a different set of real sprites gives)
  top share  the share of non-background pixels on a set's own TOP commonest colors: how
             concentrated its colors are (higher = fewer colors carry the sprites)
Background: the commonest corner color of the training sprites, and pixels within
BACKGROUND_TOLERANCE of it on every channel (antialiased edges on white).
"""
import numpy as np

from experiments.data import palette

PALETTE_SIZE = 24
TOP = 3
BACKGROUND_TOLERANCE = 20


def background(images: np.ndarray) -> np.ndarray:
  """uint8 [3]: the commonest color among the corner pixels of sprites [N, H, W, 3]."""
  corners = np.concatenate([images[:, 0, 0], images[:, 0, -1], images[:, -1, 0],
                            images[:, -1, -1]]).reshape(-1, 3)
  colors, counts = np.unique(corners, axis=0, return_counts=True)
  return colors[np.argmax(counts)]


def foreground(images: np.ndarray, bg: np.ndarray) -> np.ndarray:
  """[M, 3] the pixels farther than BACKGROUND_TOLERANCE from `bg` on some channel."""
  pixels = images.reshape(-1, 3).astype(np.int16)
  return pixels[np.abs(pixels - bg.astype(np.int16)).max(axis=1) > BACKGROUND_TOLERANCE]


def shares(pixels: np.ndarray, colors: np.ndarray) -> np.ndarray | None:
  """[P] the share of `pixels` nearest each of `colors` (None: no pixels, or no colors)."""
  if len(pixels) == 0 or len(colors) == 0:
    return None
  counts = np.bincount(palette.nearest(pixels, colors), minlength=len(colors))
  return counts / counts.sum()


def distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
  """Total variation between two color shares: half their summed absolute difference."""
  return None if a is None or b is None else 0.5 * float(np.abs(a - b).sum())


def top_share(s: np.ndarray | None, top: int = TOP) -> float | None:
  return None if s is None else float(np.sort(s)[-top:].sum())


def report(samples: np.ndarray, heldout: np.ndarray, train: np.ndarray) -> dict:
  """Color use of uint8 samples against real held-out sprites, on the training sprites' colors."""
  bg = background(train)
  train_pixels = foreground(train, bg)
  colors = palette.fit(train_pixels, PALETTE_SIZE)
  s_train, s_held, s_samples = (shares(p, colors) for p in
                                (train_pixels, foreground(heldout, bg), foreground(samples, bg)))
  return {'colors': len(colors), 'background': bg.tolist(), 'top': TOP,
          'distance': {'samples': distance(s_samples, s_held),
                       'real_train': distance(s_train, s_held)},
          'top_share': {'samples': top_share(s_samples), 'real_heldout': top_share(s_held)}}
