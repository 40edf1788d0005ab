"""Any folder of images, or one sprite sheet.

  FOLDER/<class>/**/*.png   one subfolder per class (nested folders are read too)
  FOLDER/*.png              no subfolders: an unconditional dataset (label -1)
  SHEET.png + tile_size     one sheet sliced into tile_size tiles (or every image of a folder)

PNG, GIF (every frame), BMP and WebP, with or without alpha (composited on white); JPEGs are
named in a warning and not read (their compression smears pixel art). Sprites at
image_size are kept; larger ones shrink by nearest neighbor when the side is a whole multiple
(crisp pixel art), by area otherwise (logged, with the files, since edges soften); smaller ones
grow by whole factors. A file that cannot be used is skipped with a warning naming it; nothing
usable left (in the folder or in one class) is an error.
"""
import collections
import os
from typing import Iterator

import numpy as np
from absl import logging
from PIL import Image, ImageSequence

from experiments.data.sources.images import (Sprite, composite_on_white, fit, fit_method,
                                             is_enlarged, tiles, to_rgba, visible_pixels)

EXTENSIONS = ('.png', '.gif', '.bmp', '.webp')
NOT_READ = ('.jpg', '.jpeg')  # JPEG's compression smears pixel art's edges and flat colors
MIN_VISIBLE_FRACTION = 12 / 256  # sheet tiles with fewer non-white pixels are blank (or a stray speck)


class Skip(Exception):
  """A file that cannot be used; the message says why and how to fix it."""


def images_under(folder: str, extensions: tuple[str, ...] = EXTENSIONS) -> list[str]:
  """Every image file under `folder`, sorted, hidden files and folders left out."""
  found = []
  for parent, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found += [os.path.join(parent, f) for f in sorted(files)
              if not f.startswith('.') and f.lower().endswith(extensions)]
  return found


def _jpegs(folder: str) -> str:
  """What to say about the JPEGs under `folder` (they are not read), or ''."""
  if os.path.isfile(folder):
    return ''
  found = images_under(folder, NOT_READ)
  return (f' {len(found)} JPEG file(s) are not read (e.g. {found[0]}): JPEG compression smears '
          'the edges and colors of pixel art; save them as PNG to use them.' if found else '')


def scan(root: str) -> tuple[list[str], list[tuple[str, int]]]:
  """(class names, [(image path, label)]) with the folder layout checked; errors name the folder."""
  if os.path.isfile(root):
    return [], [(root, -1)]
  entries = sorted(e for e in os.listdir(root) if not e.startswith('.'))
  classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
  top = [e for e in entries if e.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(root, e))]
  if not classes:
    if not top:
      raise ValueError(f'Folder data: {root} holds no images ({", ".join(EXTENSIONS)}) and no class '
                       'folders. Put sprites in it (one subfolder per class, or none for an '
                       'unconditional model) and pass it as --config.data.manual_dir.'
                       + _jpegs(root))
    return [], [(os.path.join(root, e), -1) for e in top]
  if top:
    raise ValueError(f'Folder data: {root} holds both images ({", ".join(top[:3])}) and class folders '
                     f'({", ".join(classes[:3])}). Move the images into a class folder, or remove the '
                     'folders for an unconditional dataset.')
  files = []
  for label, name in enumerate(classes):
    found = images_under(os.path.join(root, name))
    if not found:
      raise ValueError(f'Folder data: class folder {os.path.join(root, name)} has no images '
                       f'({", ".join(EXTENSIONS)}). Add sprites to it or remove it.'
                       f'{_jpegs(os.path.join(root, name))}')
    files += [(path, label) for path in found]
  return classes, files


def class_names(root: str) -> list[str]:
  return scan(root)[0]


def _frames(path: str) -> list[np.ndarray]:
  """Every frame of the file as RGBA uint8 [H, W, 4]."""
  try:
    with Image.open(path) as image:
      return [to_rgba(frame) for frame in ImageSequence.Iterator(image)]
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise Skip(f'not a readable image ({e})') from e


def _pieces(rgba: np.ndarray, tile_size: int) -> Iterator[tuple[str, str, np.ndarray]]:
  """(group suffix, origin suffix, RGB piece): the whole image, or its non-blank tiles."""
  if not tile_size:
    yield '', '', composite_on_white(rgba)
    return
  height, width = rgba.shape[:2]
  if height % tile_size or width % tile_size:
    raise Skip(f'is {width}x{height}, not a whole number of {tile_size}x{tile_size} tiles: crop it, '
               'or set --config.data.tile_size to the size of its tiles')
  for row, col, tile in tiles(rgba, tile_size):
    rgb = composite_on_white(tile)
    if visible_pixels(rgb) >= max(1, MIN_VISIBLE_FRACTION * tile_size * tile_size):
      yield f' r{row}c{col}', f' row {row} col {col}', rgb


def _keyed_background(rgba: np.ndarray) -> str:
  """'#rrggbb' when an image has no transparency and most of its border is one color that is not
  white: a background keyed on a color (magenta sheets), which would be learnt as part of every
  sprite; '' otherwise."""
  if np.any(rgba[..., 3] < 255):
    return ''
  border = np.concatenate([rgba[0], rgba[-1], rgba[:, 0], rgba[:, -1]])[:, :3]
  colors, counts = np.unique(border, axis=0, return_counts=True)
  top = colors[np.argmax(counts)]
  if counts.max() < 0.5 * len(border) or np.all(top >= 250):
    return ''
  return '#' + ''.join(f'{int(c):02x}' for c in top)


def _file_sprites(path: str, label: int, rel: str, size: int, tile_size: int, methods,
                  keyed) -> list[Sprite]:
  """The sprites of one file; frames of an animation and a tile's frames share a group. The resize
  method of each is added to `methods`, and a keyed background (_keyed_background) to `keyed`, once
  the whole file is known to be usable."""
  frames, out, chosen = _frames(path), [], []
  background = _keyed_background(frames[0]) if frames else ''
  for k, rgba in enumerate(frames):
    frame = f' frame {k}' if len(frames) > 1 else ''
    for group, origin, rgb in _pieces(rgba, tile_size):
      if not tile_size and visible_pixels(rgb) == 0:
        continue
      try:
        method = fit_method(rgb.shape[0], rgb.shape[1], size)
      except ValueError as e:
        raise Skip(f'{e}: crop or resize it, slice it with --config.data.tile_size, or change '
                   '--config.data.image_size') from e
      if method == 'nearest' and not is_enlarged(rgb, size):
        method = 'area'  # drawn at its own size: one pixel in four would drop outlines
      chosen.append((f'{rgb.shape[1]}x{rgb.shape[0]}', method))
      out.append(Sprite(image=fit(rgb, size, method), label=label, group=rel + group,
                        origin=rel + origin + frame))
  if not out:
    raise Skip('is blank (white or transparent everywhere)')
  for key in chosen:
    methods[key].append(rel)
  if background:
    keyed[background].append(rel)
  return out


def _log_methods(methods: dict, size: int) -> None:
  parts = [f'{len(files)} {method} from {shape}' for (shape, method), files in sorted(methods.items())]
  logging.info('Folder data at %dx%d: %s.', size, size, ', '.join(parts))
  for (shape, method), files in sorted(methods.items()):
    if method == 'area':
      side = int(shape.split('x')[0])
      why = (f'drawn at that size, not {size}x{size} sprites enlarged' if side % size == 0
             else f'not a whole multiple of {size}')
      logging.warning('Folder data: %d sprites are %s, %s, so they are area-resized and their '
                      'pixel edges soften (e.g. %s).', len(files), shape, why,
                      ', '.join(sorted(set(files))[:3]))


def sprites(root: str, image_size: int, tile_size: int = 0) -> list[Sprite]:
  """Every usable sprite of the folder (or sheet), RGB on white, image_size x image_size."""
  if os.path.isfile(root) and not tile_size:
    raise ValueError(f'Folder data: {root} is a file. To slice it as a sprite sheet, pass '
                     '--config.data.tile_size=N (its tile size); otherwise pass its folder.')
  names, files = scan(root)
  jpegs = _jpegs(root)
  if jpegs:
    logging.warning('Folder data:%s', jpegs)
  if len(names) == 1:
    logging.warning('Folder data: %s has a single class folder (%s), so the model learns one class. '
                    'Put the images directly in %s for an unconditional model, or add class folders.',
                    root, names[0], root)
  base = os.path.dirname(root) if os.path.isfile(root) else root
  out, skipped = [], []
  methods, keyed = collections.defaultdict(list), collections.defaultdict(list)
  for path, label in files:
    rel = os.path.relpath(path, base)
    try:
      out += _file_sprites(path, label, rel, image_size, tile_size, methods, keyed)
    except Skip as e:
      logging.warning('Folder data: skipped %s: %s.', path, e)
      skipped.append(f'{rel} ({e})')
  if skipped:
    logging.warning('Folder data: skipped %d of %d files in %s.', len(skipped), len(files), root)
  _check_usable(root, names, out, skipped)
  _log_methods(methods, image_size)
  for color, names_ in sorted(keyed.items()):
    logging.warning('Folder data: %d images have no transparency and a %s background, not white '
                    '(e.g. %s): it is learnt as part of every sprite%s. Make that color '
                    'transparent (or white) in them.', len(names_), color,
                    ', '.join(sorted(names_)[:3]),
                    ', and a sheet\'s empty tiles are kept as sprites' if tile_size else '')
  return out


def _check_usable(root: str, names: list[str], found: list[Sprite], skipped: list[str]) -> None:
  why = f' Skipped: {"; ".join(skipped[:5])}{" ..." if len(skipped) > 5 else ""}.' if skipped else ''
  if not found:
    raise ValueError(f'Folder data: nothing usable in {root}.{why}')
  empty = sorted(set(range(len(names))) - {s.label for s in found})
  if empty:
    raise ValueError(f'Folder data: no usable image in class folder '
                     f'{os.path.join(root, names[empty[0]])}.{why}')
