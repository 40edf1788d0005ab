"""Color use: do samples spread their pixels over the set's colors as real sprites do?

FID in a 64-d feature space and grain (grain.py) both miss a model that draws clean, flat sprites
in too few colors: trained with the l1 norm on DawnLike, one drew 67-70% of its non-background
pixels in its 3 commonest colors, real sprites 49%, with FID at the floor and grain below real
(docs/ablations.md). Here every non-background pixel is mapped to the nearest of the training
sprites' colors (k-means to PALETTE_SIZE: all 17 of DawnLike's besides white, the main shades of
emoji), and
  distance   the total variation between the samples' and held-out sprites' shares of those
             colors (0 = the same mix, 1 = no color in common), next to the same distance for
             as many training sprites as there are samples (the mean over FLOOR_DRAWS draws):
             what a set of real sprites of that size gives
  top share  the share of non-background pixels on a set's own TOP commonest colors: how
             concentrated its colors are (higher = fewer colors carry the sprites)
Background: the commonest corner color of the training sprites, and pixels within
BACKGROUND_TOLERANCE of it on every channel (antialiased edges on white). Not the sprite sheets'
flood-filled white (pictures/sprite_sheet.background_mask): a folder of sprites may sit on any
color, and white drawn inside a sprite on white counts as background here in all sets alike.
"""
import numpy as np

from experiments.data import palette

PALETTE_SIZE = 24
TOP = 3
BACKGROUND_TOLERANCE = 20
FLOOR_DRAWS = 10


def background(images: np.ndarray) -> tuple[np.ndarray, float]:
  """(uint8 [3], share): the commonest color among the corner pixels of sprites [N, H, W, 3],
  and the share of corners it holds (low: the set has no one background)."""
  corners = np.concatenate([images[:, 0, 0], images[:, 0, -1], images[:, -1, 0],
                            images[:, -1, -1]]).reshape(-1, 3)
  colors, counts = np.unique(corners, axis=0, return_counts=True)
  return colors[np.argmax(counts)], float(counts.max() / counts.sum())


def is_foreground(images: np.ndarray, bg: np.ndarray) -> np.ndarray:
  """bool [...]: pixels farther than BACKGROUND_TOLERANCE from `bg` on some channel."""
  return (np.abs(images.astype(np.int16) - bg.astype(np.int16)).max(axis=-1)
          > BACKGROUND_TOLERANCE)


def color_counts(images: np.ndarray, bg: np.ndarray, colors: np.ndarray) -> np.ndarray:
  """int [N, P]: per sprite, how many of its non-background pixels lie nearest each color."""
  n, p = len(images), len(colors)
  fg = is_foreground(images, bg).reshape(n, -1)
  sprite = np.repeat(np.arange(n), fg.shape[1])[fg.ravel()]
  if p == 0 or len(sprite) == 0:
    return np.zeros((n, p), np.int64)
  nearest = palette.nearest(images.reshape(-1, 3)[fg.ravel()], colors)
  return np.bincount(sprite * p + nearest, minlength=n * p).reshape(n, p)


def shares(counts: np.ndarray) -> np.ndarray | None:
  """[P] the share of a set's pixels on each color, from color_counts (None: no pixels)."""
  total = counts.sum(axis=0)
  return total / total.sum() if total.sum() else None


def distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
  """Total variation between two color shares: half their summed absolute difference."""
  return None if a is None or b is None else 0.5 * float(np.abs(a - b).sum())


def top_share(s: np.ndarray | None, top: int = TOP) -> float | None:
  """The share on the `top` largest of color shares `s`: how few colors carry a set."""
  return None if s is None else float(np.sort(s)[-top:].sum())


def floor_distance(train_counts: np.ndarray, held: np.ndarray | None, n: int,
                   seed: int = 0) -> float | None:
  """Mean distance to the held-out shares of n training sprites drawn without replacement
  (FLOOR_DRAWS draws): the distance grows as a set shrinks, so the floor has the samples' size."""
  rng = np.random.default_rng(seed)
  n = min(n, len(train_counts))
  found = [distance(shares(train_counts[rng.choice(len(train_counts), n, replace=False)]), held)
           for _ in range(FLOOR_DRAWS)]
  return None if None in found else float(np.mean(found))


def report(samples: np.ndarray, heldout: np.ndarray, train: np.ndarray) -> dict:
  """Color use of uint8 samples against real held-out sprites, on the training sprites' colors."""
  bg, bg_share = background(train)
  train_pixels = train[is_foreground(train, bg)]  # uint8 [M, 3]
  colors = palette.fit(train_pixels, PALETTE_SIZE)
  s_held = shares(color_counts(heldout, bg, colors))
  s_samples = shares(color_counts(samples, bg, colors))
  train_counts = color_counts(train, bg, colors)
  return {'palette_size': len(colors), 'background': bg.tolist(),
          'background_share': bg_share, 'top': TOP,
          'distance': {'samples': distance(s_samples, s_held),
                       'real_train': floor_distance(train_counts, s_held, len(samples))},
          'top_share': {'samples': top_share(s_samples), 'real_heldout': top_share(s_held)}}
