"""DawnLike v1.81 (DragonDePlatino, palette by DawnBringer; CC-BY-SA 3.0), as a user unzips it.

The pack is a folder of 16x16-tile sheets. Sprites come from `Characters/` and `Items/`; each
sheet maps to one class. `Objects/` is left out on purpose: its walls, floors, doors, trees and
map pieces are tiles that fit together into scenery (a tree or a wall corner spans several
tiles), not stand-alone sprites, and their ~2,900 distinct tiles would outnumber the 2,100 sprites.

Character sheets come in two animation frames (`Cat0.png`, `Cat1.png`); so do the chests
(`Chest0.png` closed, `Chest1.png` open). Both frames of one tile share a group, so the
train/test split never separates them. Every sprite keeps its sheet, row and column in `origin`.
"""
import os
import re
from typing import Iterator

import numpy as np
from absl import logging
from PIL import Image

from experiments.data.sources.images import Sprite, composite_on_white, fit, fit_method, tiles, to_rgba

CLASS_NAMES = ('humanoid', 'animal', 'monster', 'food', 'magic_item', 'equipment', 'treasure_tool')
_CLASS_OF_SHEET = {
    'Characters': {
        'Player': 0, 'Humanoid': 0,
        'Aquatic': 1, 'Avian': 1, 'Cat': 1, 'Dog': 1, 'Pest': 1, 'Quadraped': 1, 'Reptile': 1,
        'Rodent': 1,
        'Demon': 2, 'Elemental': 2, 'Misc': 2, 'Plant': 2, 'Slime': 2, 'Undead': 2},
    'Items': {
        'Food': 3, 'Flesh': 3,
        'Potion': 4, 'Scroll': 4, 'Book': 4, 'Wand': 4, 'Ring': 4, 'Amulet': 4,
        'ShortWep': 5, 'MedWep': 5, 'LongWep': 5, 'Ammo': 5, 'Armor': 5, 'Shield': 5, 'Hat': 5,
        'Boot': 5, 'Glove': 5,
        'Money': 6, 'Key': 6, 'Light': 6, 'Music': 6, 'Tool': 6, 'Rock': 6, 'Chest': 6},
}
TILE = 16
MIN_VISIBLE = 12  # fewer non-transparent pixels than this is a blank tile or a stray speck
LICENSE = 'DawnLike v1.81 by DragonDePlatino, palette by DawnBringer, CC-BY-SA 3.0'


def _frame(stem: str) -> tuple[str, str]:
  """'Cat0' -> ('Cat', '0'); sheets without a frame digit ('Food') -> ('Food', '')."""
  match = re.fullmatch(r'(.*?)([01])', stem)
  return (match.group(1), match.group(2)) if match else (stem, '')


def _is_sprite(sheet: str, row: int, col: int) -> bool:
  """False for the "This is Platino!" text box and its arrow under the Platino sprite (Reptile,
  rows 12 and below, all but row 12 column 3, which is Platino, kept as the pack's README asks)."""
  return not (sheet == 'Reptile' and row >= 12 and (row, col) != (12, 3))


def check_folder(folder: str) -> None:
  missing = [sub for sub in _CLASS_OF_SHEET if not os.path.isdir(os.path.join(folder, sub))]
  if missing:
    raise FileNotFoundError(
        f'DawnLike: {folder} has no {" or ".join(missing)} folder. Pass the folder of the unzipped '
        'pack, the one holding Characters/, Items/, Objects/ and README.txt, as '
        '--config.data.manual_dir=FOLDER.')


def sheet_files(folder: str) -> list[str]:
  """The PNG files `sheets` looks at (the sheet folders that exist), without checking anything."""
  return [os.path.join(folder, sub, name) for sub in _CLASS_OF_SHEET
          if os.path.isdir(os.path.join(folder, sub))
          for name in sorted(os.listdir(os.path.join(folder, sub))) if name.lower().endswith('.png')]


def sheets(folder: str) -> list[tuple[str, str, int]]:
  """(path, sheet name without frame digit, class) for every known sheet, sorted; unknown and
  missing sheets are warned about by name."""
  check_folder(folder)
  found, unknown = [], []
  for sub, classes in _CLASS_OF_SHEET.items():
    names = sorted(n for n in os.listdir(os.path.join(folder, sub)) if n.lower().endswith('.png'))
    for name in names:
      sheet = _frame(name[:-4])[0]
      (found if sheet in classes else unknown).append((os.path.join(folder, sub, name), sheet,
                                                       classes.get(sheet, -1)))
    missing = sorted(set(classes) - {_frame(n[:-4])[0] for n in names})
    if missing:
      logging.warning('DawnLike: no sheet for %s in %s; those sprites will be missing.',
                      ', '.join(missing), os.path.join(folder, sub))
  if unknown:
    logging.warning('DawnLike: %d sheets not in the class table were skipped: %s.', len(unknown),
                    ', '.join(os.path.relpath(p, folder) for p, _, _ in unknown))
  if not found:
    raise ValueError(f'DawnLike: no known sheet (Characters/Cat0.png, Items/Food.png, ...) in {folder}.')
  return found


def _read(path: str) -> np.ndarray | None:
  try:
    with Image.open(path) as image:
      return to_rgba(image)
  except (OSError, ValueError, SyntaxError) as e:
    logging.warning('DawnLike: skipped %s: not a readable PNG (%s).', path, e)
    return None


def _sheet_sprites(path: str, sheet: str, label: int, folder: str, size: int) -> Iterator[Sprite]:
  rgba = _read(path)
  if rgba is None:
    return
  sub, stem = os.path.basename(os.path.dirname(path)), _frame(os.path.basename(path)[:-4])[1]
  method = fit_method(TILE, TILE, size)
  for row, col, tile in tiles(rgba, TILE):
    if np.count_nonzero(tile[..., 3]) < MIN_VISIBLE or not _is_sprite(sheet, row, col):
      continue
    origin = f'{os.path.relpath(path, folder)} row {row} col {col}' + (f' frame {stem}' if stem else '')
    yield Sprite(image=fit(composite_on_white(tile), size, method), label=label,
                 group=f'{sub}/{sheet}/r{row:02d}c{col}', origin=origin)


def sprites(folder: str, image_size: int) -> Iterator[Sprite]:
  """Every sprite tile of the pack, RGB on white, at image_size (a whole multiple of 16, nearest)."""
  if image_size % TILE:
    raise ValueError(f'DawnLike tiles are 16x16; data.image_size={image_size} is not a multiple of 16. '
                     'Use --config.data.image_size=16 (or 32, 48, ...: pixels are repeated).')
  for path, sheet, label in sheets(folder):
    yield from _sheet_sprites(path, sheet, label, folder, image_size)
