"""PNG grids and GIFs of sprites, upscaled with nearest neighbor so pixels stay square.

Labels use PIL's built-in bitmap font (nothing to download), drawn at 1x and upscaled by
`TEXT_SCALE` with nearest neighbor, on a canvas whose sprites are already upscaled: the
text stays crisp and readable however small the sprites are.
"""
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TEXT_SCALE = 2
WHITE, INK = (255, 255, 255), (40, 40, 40)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def grid(images: np.ndarray, rows: int, pad: int = 1, background: int = 255) -> np.ndarray:
  """uint8 [N, S, S, C] -> one uint8 image, `rows` rows filled left to right, top to bottom."""
  n, h, w, c = images.shape
  cols = -(-n // rows)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), background, np.uint8)
  for i, image in enumerate(images):
    r, k = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = image
  return out


def text(lines: str, scale: int = TEXT_SCALE) -> np.ndarray:
  """Dark text on white as uint8 [H, W, 3]; '\\n' separates centered lines."""
  font = ImageFont.load_default_imagefont()
  rows = lines.split('\n')
  widths = [int(font.getbbox(row)[2]) if row else 0 for row in rows]
  line_h = 12
  image = Image.new('RGB', (max(widths + [1]) + 2, line_h * len(rows)), WHITE)
  draw = ImageDraw.Draw(image)
  for i, (row, width) in enumerate(zip(rows, widths)):
    draw.text(((image.width - width) // 2, i * line_h), row, fill=INK, font=font)
  return upscale(np.asarray(image), scale)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int, width: int) -> None:
  """Paste `image` with its top edge at y, centered on the `width` pixels starting at x.

  An image wider than that overhangs both sides, clipped only at the canvas's edges.
  """
  h, w = image.shape[:2]
  x += (width - w) // 2
  lo, hi = max(x, 0), min(x + w, canvas.shape[1])
  canvas[y:y + h, lo:hi] = image[:, lo - x:hi - x]


def _stack(parts: Sequence[np.ndarray], gap: int) -> np.ndarray:
  """Center images above each other, `gap` white pixels apart."""
  parts = [p for p in parts if p is not None and p.size]
  width = max(p.shape[1] for p in parts)
  out = np.full((sum(p.shape[0] for p in parts) + gap * (len(parts) - 1), width, 3), 255, np.uint8)
  y = 0
  for p in parts:
    _paste(out, p, 0, y, width)
    y += p.shape[0] + gap
  return out


def labeled_grid(tiles: Sequence[Sequence[np.ndarray]], *, col_labels: Sequence[str] = (),
                  row_labels: Sequence[str] = (), spans: Sequence[tuple[int, int, str]] = (),
                  title: str = '', footer: str = '', gap: int = 6) -> np.ndarray:
  """A table of equally sized (already upscaled) uint8 tiles with labels around it.

  col_labels go above each column, row_labels left of each row, and spans (first, stop, text)
  are headings centered over columns first..stop-1 (e.g. a word naming a range of noise levels).
  """
  h, w = tiles[0][0].shape[:2]
  cols = [text(s) for s in col_labels]
  rows = [text(s) for s in row_labels]
  cell_w = max([w] + [c.shape[1] for c in cols]) + gap
  left = max([r.shape[1] for r in rows], default=0) + (gap if rows else 0)
  head = max([c.shape[0] for c in cols], default=0) + (gap if cols else 0)
  span_h = max([text(s).shape[0] for *_, s in spans], default=0) + (2 * gap if spans else 0)
  table = np.full((span_h + head + len(tiles) * (h + gap), left + len(tiles[0]) * cell_w, 3),
                  255, np.uint8)
  for first, stop, label in spans:
    x0, x1 = left + first * cell_w, left + stop * cell_w - gap
    _paste(table, text(label), x0, 0, x1 - x0)
    table[span_h - gap - 2:span_h - gap, x0:x1] = INK  # a rule under the heading shows its range
  for k, c in enumerate(cols):
    _paste(table, c, left + k * cell_w, span_h, cell_w - gap)
  for r, row in enumerate(tiles):
    y = span_h + head + r * (h + gap)
    if rows:
      _paste(table, rows[r], 0, y + max(h - rows[r].shape[0], 0) // 2, left - gap)
    for k, tile in enumerate(row):
      _paste(table, tile, left + k * cell_w, y, cell_w - gap)
  return _stack([text(title) if title else None, table, text(footer) if footer else None], gap)


def save_png(path: str, image: np.ndarray, factor: int = 1) -> None:
  """RGB or RGBA uint8 [H, W, C] as a PNG, upscaled by `factor`."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(upscale(image, factor)).save(path)


def _pad_to(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  out = np.full((height, width, frame.shape[2]), 255, np.uint8)
  out[:frame.shape[0], :frame.shape[1]] = frame
  return out


def save_gif(path: str, frames: list[np.ndarray], factor: int = 1, ms_per_frame: int = 120,
             hold_last_ms: int = 1500) -> None:
  """An endlessly looping GIF; the last frame (the result) stays up longer.

  Frames of different sizes (captions of different widths) are padded with white to the largest.
  """
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  height, width = (max(f.shape[i] for f in frames) for i in (0, 1))
  images = [Image.fromarray(upscale(_pad_to(f, height, width), factor)) for f in frames]
  durations = [ms_per_frame] * (len(images) - 1) + [hold_last_ms]
  images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                 optimize=False)
