"""From a source's sprites to a clean dataset: exact duplicates removed, a split by group.

The split is a pure function of the group name (a stable hash), so it is the same on
every machine and every rebuild, and no group ever straddles train and test.
"""
import collections
import hashlib
from typing import Iterable

from experiments.sources.images import Sprite


def deduplicate(sprites: Iterable[Sprite]) -> tuple[list[Sprite], int]:
  """Drop sprites whose pixels equal an earlier sprite's; returns (kept, number dropped)."""
  seen, kept, dropped = set(), [], 0
  for sprite in sprites:
    key = sprite.image.tobytes()
    if key in seen:
      dropped += 1
      continue
    seen.add(key)
    kept.append(sprite)
  return kept, dropped


def in_test_split(group: str, test_fraction: float) -> bool:
  digest = hashlib.sha256(group.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64 < test_fraction


def split(sprites: list[Sprite], test_fraction: float) -> dict[str, list[Sprite]]:
  out = {'train': [], 'test': []}
  for sprite in sprites:
    out['test' if in_test_split(sprite.group, test_fraction) else 'train'].append(sprite)
  return out


def counts(splits: dict[str, list[Sprite]], class_names: list[str]) -> dict:
  """{split: {class name: count}} for the dataset info and the build summary."""
  names = list(class_names) or ['unconditional']
  return {name: {names[k]: v for k, v in sorted(collections.Counter(
      max(s.label, 0) for s in sprites).items())} for name, sprites in splits.items()}
