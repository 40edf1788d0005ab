"""Game-ready sprite sheets: transparent background, optional k-color palette, JSON atlas.

Pure numpy image math; only `write_sheet` touches the disk. Sprites are drawn on white, so the
background is keyed out as the white-ish pixels connected to the border (a flood fill): white
inside a sprite (an eye, a highlight) is enclosed by the sprite and stays opaque.
"""
import json
import os
from typing import Sequence

import numpy as np

from experiments.data import palette
from experiments.pictures import canvas


def background_mask(images: np.ndarray, tolerance: int = 24) -> np.ndarray:
  """bool [N, H, W]: white-ish pixels (every channel >= 255 - tolerance) 4-connected to the border.

  A flood fill run as repeated one-pixel growth inside the white-ish pixels, batched over sprites.
  """
  white = np.all(images >= 255 - tolerance, axis=-1)
  mask = np.zeros_like(white)
  for edge in (np.s_[:, 0, :], np.s_[:, -1, :], np.s_[:, :, 0], np.s_[:, :, -1]):
    mask[edge] = white[edge]
  while True:
    grown = mask.copy()
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    grown[:, :, 1:] |= mask[:, :, :-1]
    grown[:, :, :-1] |= mask[:, :, 1:]
    grown &= white
    if np.array_equal(grown, mask):
      return mask
    mask = grown


def to_rgba(images: np.ndarray, tolerance: int = 24) -> np.ndarray:
  """uint8 [N, H, W, 3] on white -> [N, H, W, 4]; the keyed background is transparent black."""
  background = background_mask(images, tolerance)
  rgba = np.concatenate([images, np.full(images.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
  rgba[background] = 0
  return rgba


def reduce_palette(rgba: np.ndarray, k: int) -> np.ndarray:
  """Every opaque pixel of every sprite mapped to one shared palette of <= k colors."""
  opaque = rgba[..., 3] > 0
  if k <= 0 or not np.any(opaque):
    return rgba
  colors = palette.kmeans(rgba[opaque][:, :3], k)
  out = rgba.copy()
  out[opaque, :3] = colors[palette.nearest(rgba[opaque][:, :3], colors)]
  return out


def layout(count: int, columns: int, size: int, pad: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
  """Top-left (x, y) of each sprite filled row by row, `pad` pixels around each; and (width, height)."""
  columns = max(1, min(columns, count))
  rows = -(-count // columns)
  places = [(pad + (i % columns) * (size + pad), pad + (i // columns) * (size + pad)) for i in range(count)]
  return places, (pad + columns * (size + pad), pad + rows * (size + pad))


def sprite_sheet(rgba: np.ndarray, columns: int, factor: int = 1, pad: int = 1):
  """(sheet uint8 [H, W, 4], boxes [(x, y, w, h)]) of upscaled sprites on transparent pixels."""
  n, size = len(rgba), rgba.shape[1] * factor
  places, (width, height) = layout(n, columns, size, pad * factor)
  sheet = np.zeros((height, width, 4), np.uint8)
  for sprite, (x, y) in zip(rgba, places):
    sheet[y:y + size, x:x + size] = canvas.upscale(sprite, factor)
  return sheet, [(x, y, size, size) for x, y in places]


def atlas(boxes, names: Sequence[str], classes: Sequence[str], image: str, size) -> dict:
  """The JSON atlas: where each sprite sits in the sheet, in sheet pixels."""
  return {'image': image, 'width': int(size[1]), 'height': int(size[0]),
          'sprites': [{'name': n, 'class': c, 'x': int(x), 'y': int(y), 'w': int(w), 'h': int(h)}
                      for n, c, (x, y, w, h) in zip(names, classes, boxes)]}


def write_sheet(stem: str, images: np.ndarray, names: Sequence[str], classes: Sequence[str], *,
                columns: int, colors: int = 0, factor: int = 1, tolerance: int = 24) -> str:
  """<stem>_sheet.png (RGBA) and <stem>_sheet.json (atlas); returns the PNG's path."""
  rgba = reduce_palette(to_rgba(images, tolerance), colors)
  sheet, boxes = sprite_sheet(rgba, columns, factor)
  png = stem + '_sheet.png'
  canvas.save_png(png, sheet)
  with open(stem + '_sheet.json', 'w', encoding='utf-8') as f:
    json.dump(atlas(boxes, names, classes, os.path.basename(png), sheet.shape), f, indent=1)
  return png
