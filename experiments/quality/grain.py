"""Grain: how much of the change from pixel to pixel is noise rather than edges.

Pixel art and emoji are regions of flat color with crisp edges. Inside a region a pixel matches
at least one of its 4 neighbors, so the difference to its most similar neighbor is about 0; at
an edge the difference to its least similar neighbor is large. Grain is the first summed over a
set of sprites divided by the second: near 0 for flat fills, higher for speckles and blotchy
"watercolor" fills, and the same for a paler or darker version of a sprite (both sums scale).
Real sprites are not 0 (antialiased outlines, shading, dithering): compare with real held-out
sprites, as every other metric here. FID in a 64-d feature space barely sees this; the eye does.
"""
import numpy as np

# the 4-neighbor offsets (dy, dx)
_NEIGHBORS = ((-1, 0), (1, 0), (0, -1), (0, 1))
# A pixel this many levels (0..255, largest channel) or more from each of its neighbors stands
# out to the eye; steps under it are the few-level wobble of a fill that is not quite flat.
APART = 16


def pixel_steps(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(nearest, farthest) float32 [N, H, W]: the largest channel difference (0..255) between each
  pixel of uint8 sprites [N, H, W, C] and its most similar / least similar 4-neighbor inside
  the sprite."""
  x = np.asarray(images, np.int16)
  if x.ndim != 4 or x.shape[1] < 2 or x.shape[2] < 2:
    raise ValueError(f'grain needs sprites [N, H, W, C] of at least 2x2 pixels; got {x.shape}.')
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  steps = np.stack([np.abs(x - padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]).max(axis=-1)
                    for dy, dx in _NEIGHBORS]).astype(np.float32)  # [4, N, H, W]
  inside = np.ones((4, 1, h, w), bool)  # pixels whose neighbor in that direction exists
  inside[0, :, 0] = inside[1, :, -1] = inside[2, :, :, 0] = inside[3, :, :, -1] = False
  nearest = np.where(inside, steps, np.inf).min(axis=0)
  farthest = np.where(inside, steps, -np.inf).max(axis=0)
  return nearest, farthest


def _measures(images: np.ndarray) -> tuple[float | None, dict]:
  """(grain, pixel_shares) from one pass of pixel_steps."""
  if len(images) == 0:
    return None, {'flat': None, 'apart': None}
  nearest, farthest = pixel_steps(images)
  total = float(farthest.sum())
  shares = {'flat': float(np.mean(nearest == 0)), 'apart': float(np.mean(nearest >= APART))}
  return (float(nearest.sum()) / total if total > 0 else 0.0), shares


def grain(images: np.ndarray) -> float | None:
  """Sum of nearest-neighbor steps over the sum of farthest-neighbor steps (None: no sprites;
  0 for sprites of one flat color each)."""
  return _measures(images)[0]


def pixel_shares(images: np.ndarray) -> dict:
  """Which kind of grain: the share of pixels equal to a neighbor (`flat`: most of a pixel-art
  sprite, whose fills are exact) and of pixels APART levels or more from every neighbor
  (`apart`: specks, and single-pixel details such as a diagonal line's). None: no sprites."""
  return _measures(images)[1]


def report(samples: np.ndarray, heldout: np.ndarray) -> dict:
  """Grain of the samples and of real held-out sprites, and their ratio (1 = as flat as real),
  with pixel_shares of both under `flat` and `apart`."""
  (g_samples, mine), (g_real, real) = _measures(samples), _measures(heldout)
  ratio = g_samples / g_real if g_samples is not None and g_real else None
  return {'samples': g_samples, 'real_heldout': g_real, 'ratio': ratio,
          **{k: {'samples': mine[k], 'real_heldout': real[k]} for k in ('flat', 'apart')}}
