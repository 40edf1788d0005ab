"""From a source's sprites to a clean dataset: variants grouped, exact duplicates removed, split by group.

Held-out sprites are only worth judging if no variant of them was trained on, so sprites
are first joined into groups (connected components) when any of these holds:
  * the source says so (the two animation frames of a DawnLike character, a GIF's frames);
  * their pixels are identical (so dropping a duplicate never hides a link between groups);
  * they have the same structure up to a shift (on the background, or around the tile as
    np.roll does), a flip and a recoloring (augmented copies of one base sprite, as in the
    course's file: see `structure_key`);
  * their pixels, or one's and the other's mirror image, are nearly equal: mean absolute
    difference <= NEAR_MAD (see `near_pairs`).
Then exact duplicates are dropped and the split is a pure function of the group name (a
stable hash), so it is the same on every machine and every rebuild, and no group straddles it.
"""
import collections
import dataclasses
import hashlib
from typing import Iterable

import numpy as np
from scipy import sparse, spatial

from experiments.data import palette
from experiments.data.sources.images import Sprite

MIN_PIXELS_PER_COLOUR = 4  # below this, a sprite's colors carry its content: see `structure_key`
NEAR_MAD = 2.0  # on the 0..255 scale: a few changed pixels in a 16x16 sprite, never a different sprite


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


def _relabel(packed: np.ndarray, background: int) -> bytes:
  """Colors renamed by order of first appearance (row by row), background always 0: a recoloring's
  fingerprint, since any one-to-one change of colors gives the same labels."""
  flat = packed.ravel()
  colors, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
  rank = np.empty(len(colors), np.int64)
  rank[np.argsort(first)] = np.arange(1, len(colors) + 1)
  labels = rank[inverse.ravel()]
  labels[flat == background] = 0
  return np.asarray(packed.shape, np.uint16).tobytes() + labels.astype(np.uint16).tobytes()


def _backgrounds(packed: np.ndarray) -> np.ndarray:
  """The colors that fill the most whole rows and columns (a drawing's margins, wherever a shift
  put them), else the commonest colors: usually one, more on a tie (each is tried, since which
  color a tie favors must not depend on the colors' values, which a recoloring changes)."""
  rows, cols = (packed == packed[:, :1]).all(axis=1), (packed == packed[:1]).all(axis=0)
  lines = np.concatenate([packed[rows, 0], packed[0, cols]])
  colors, counts_ = np.unique(lines if lines.size else packed, return_counts=True)
  return colors[counts_ == counts_.max()]


def _least_turns(profile: np.ndarray) -> list[int]:
  """The turns k of a ring of numbers that make np.roll(profile, -k) the smallest (in order): the
  same ring shifted has the same smallest turn, so a cut there does not depend on the shift."""
  ring = profile.tolist()  # Python sequences compare in order, and fast at this size
  turns = [ring[k:] + ring[:k] for k in range(len(ring))]
  smallest = min(turns)
  return [k for k, turn in enumerate(turns) if turn == smallest]


def _key_on(packed: np.ndarray, background: int) -> bytes:
  """structure_key with this background color."""
  drawn = packed != background
  if not drawn.any():
    return b'blank'
  crops = {}  # by their bytes: a periodic drawing turns into the same crop many times
  for flip in (packed, packed[:, ::-1], packed[::-1], packed[::-1, ::-1]):
    flip_drawn = flip != background
    for dy in _least_turns(flip_drawn.sum(axis=1)):
      for dx in _least_turns(flip_drawn.sum(axis=0)):
        turned = np.roll(flip, (-dy, -dx), axis=(0, 1))
        turned_drawn = turned != background  # the cut background lines now all lead: drop them
        crop = turned[turned_drawn.any(1).argmax():, turned_drawn.any(0).argmax():]
        crops.setdefault(np.asarray(crop.shape, np.uint16).tobytes() + crop.tobytes(), crop)
  first = next(iter(crops.values()))  # all hold the same colors: the same lines, turned
  if len(np.unique(first)) * MIN_PIXELS_PER_COLOUR > drawn.sum():
    # Not a small palette (a photo, or anti-aliased art): one-to-one recoloring would make any
    # two images of all-different colors alike, so only shifts and flips are forgiven.
    return b'rgb' + min(crops)
  return min(_relabel(c, background) for c in crops.values())


def structure_key(image: np.ndarray) -> bytes:
  """The same for a sprite shifted on its background or around the tile (np.roll), flipped
  (either way) or recolored one-to-one.

  The tile is read as a ring each way and turned to where its line-by-line count of drawn pixels
  is the smallest sequence, which starts with its longest run of background lines (for a sprite
  with margins, usually its bottom and top ones joined; or a gap inside it that is longer), and
  those lines are cut. The smallest fingerprint of its four flips is kept (and of each turn, where
  two give the same counts, and each background, where two colors tie). Recolorings are only
  forgiven for a small palette (pixel art), where the shapes of the color areas, not the colors,
  are the drawing.
  """
  packed = palette.pack(image)
  return min(_key_on(packed, int(background)) for background in _backgrounds(packed))


def _block_means(images: np.ndarray, k: int) -> tuple[np.ndarray, float]:
  """(means of k x k blocks [N, k*k], pixels per block) over the part of the image the blocks tile."""
  n, size = len(images), images.shape[1]
  block = max(size // k, 1)
  k = size // block
  crop = images[:, :k * block, :k * block].astype(np.float32)
  return crop.reshape(n, k, block, k, block, 3).mean(axis=(2, 4, 5)).reshape(n, -1), block * block


def near_pairs(images: np.ndarray, tolerance: float = NEAR_MAD) -> np.ndarray:
  """All pairs [P, 2] (i < j) whose mean absolute pixel difference is <= tolerance, without N^2 work.

  Block means are a sound filter: |mean_b(x) - mean_b(y)| <= mean_b|x - y| for every block b, so
  the L1 distance of the block-mean vectors is at most MAD * pixels / block pixels. A k-d tree on
  2x2 block means finds candidates fast (a tree on more dimensions is slower than checking more
  candidates), 4x4 block means thin them out, and the survivors are checked on the full pixels.
  """
  pixels = images.shape[1] * images.shape[2]
  coarse, area = _block_means(images, 2)
  pairs = spatial.cKDTree(coarse).query_pairs(tolerance * pixels / area + 1e-3, p=1,
                                               output_type='ndarray')
  fine, area = _block_means(images, 4)
  kept = []
  for p in (pairs[start:start + 65536] for start in range(0, len(pairs), 65536)):
    p = p[np.abs(fine[p[:, 0]] - fine[p[:, 1]]).sum(axis=1) <= tolerance * pixels / area + 1e-3]
    mad = np.abs(images[p[:, 0]].astype(np.int16) - images[p[:, 1]]).mean(axis=(1, 2, 3))
    kept.append(p[mad <= tolerance])
  return np.concatenate(kept) if kept else np.zeros((0, 2), np.int64)


def _near_pairs_with_mirrors(images: np.ndarray) -> np.ndarray:
  """near_pairs, also between a sprite and another's mirror image (a flipped, retouched copy)."""
  n = len(images)
  pairs = near_pairs(np.concatenate([images, images[:, :, ::-1]])) % n
  return pairs[pairs[:, 0] != pairs[:, 1]]


def _same_key_pairs(keys: list) -> np.ndarray:
  """Pairs [N, 2] linking every item to the first item with the same key."""
  first = {}
  return np.asarray([(i, first.setdefault(key, i)) for i, key in enumerate(keys)], np.int64)


def _structure_keys(sprites: list[Sprite]) -> list[bytes]:
  """`structure_key` per sprite, computed once per distinct image (the course repeats many)."""
  cache = {}
  for sprite in sprites:
    pixels = sprite.image.tobytes()
    if pixels not in cache:
      cache[pixels] = structure_key(sprite.image)
  return [cache[s.image.tobytes()] for s in sprites]


def group_names(sprites: list[Sprite]) -> list[str]:
  """Per sprite, the name of its group after joining (see the module docstring): the smallest
  source group name among the group's members, so the name does not depend on sprite order."""
  n = len(sprites)
  if n == 0:
    return []
  images = np.stack([s.image for s in sprites])
  pairs = np.concatenate([
      _same_key_pairs([s.group for s in sprites]),
      _same_key_pairs([s.image.tobytes() for s in sprites]),
      _same_key_pairs(_structure_keys(sprites)),
      _near_pairs_with_mirrors(images)])
  graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
  _, component = sparse.csgraph.connected_components(graph, directed=False)
  names = {}
  for c, sprite in zip(component, sprites):
    names[c] = min(names.get(c, sprite.group), sprite.group)
  return [names[c] for c in component]


def _test_score(group: str) -> float:
  digest = hashlib.sha256(group.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def in_test_split(group: str, test_fraction: float) -> bool:
  return _test_score(group) < test_fraction


def split(sprites: list[Sprite], test_fraction: float) -> dict[str, list[Sprite]]:
  """{'train': [...], 'test': [...]} by group hash. With two groups or more, neither split is left
  empty when test_fraction > 0: a tiny dataset still gets the lowest-scoring group as its test.
  A single group always trains (there is nothing to train on otherwise)."""
  groups = sorted({s.group for s in sprites}, key=_test_score)
  test = {g for g in groups if in_test_split(g, test_fraction) and len(groups) > 1}
  if test_fraction > 0 and len(groups) > 1:
    test = (test or {groups[0]}) - ({groups[-1]} if len(test) == len(groups) else set())
  out = {'train': [], 'test': []}
  for sprite in sprites:
    out['test' if sprite.group in test else 'train'].append(sprite)
  return out


@dataclasses.dataclass(frozen=True)
class Catalog:
  splits: dict[str, list[Sprite]]  # group = the joined group's name
  duplicates_removed: int
  num_groups: int


def prepare(sprites: Iterable[Sprite], test_fraction: float) -> Catalog:
  """Group, deduplicate and split a source's sprites."""
  sprites = list(sprites)
  grouped = [dataclasses.replace(s, group=g) for s, g in zip(sprites, group_names(sprites))]
  kept, dropped = deduplicate(grouped)
  return Catalog(splits=split(kept, test_fraction), duplicates_removed=dropped,
                   num_groups=len({s.group for s in kept}))


def counts(splits: dict[str, list[Sprite]], class_names: list[str]) -> dict:
  """{split: {class name: count}} for the dataset info and the build summary."""
  names = list(class_names) or ['unconditional']
  return {name: {names[k]: v for k, v in sorted(collections.Counter(
      max(s.label, 0) for s in sprites).items())} for name, sprites in splits.items()}


def summary(counts_: dict, class_names: list[str]) -> str:
  """The counts as a table: one line per class, one column per split, totals last."""
  names, splits = list(class_names) or ['unconditional'], list(counts_)
  width = max(len(n) for n in names + ['total'])
  lines = [f'{"class":<{width}} ' + ' '.join(f'{s:>7}' for s in splits) + f' {"total":>7}']
  for name in names + ['total']:
    row = [sum(counts_[s].values()) if name == 'total' else counts_[s].get(name, 0) for s in splits]
    lines.append(f'{name:<{width}} ' + ' '.join(f'{v:>7,}' for v in row) + f' {sum(row):>7,}')
  return '\n'.join(lines)
