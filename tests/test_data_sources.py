"""The DawnLike and folder sources, grouping of variants, and a split that no group crosses.

Folders, sheets and variants are generated here (tmp_path); only the DawnLike test reads
../shared/data and it is skipped when that is absent.
"""
import collections
import logging
import os

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, tiny_config
from configs import base
from experiments import train
from experiments.data import dataset, tfds_builder
from experiments.data.sources import catalog, dawnlike
from experiments.data.sources.images import Sprite, composite_on_white as _on_white, fit, is_enlarged

DAWNLIKE = os.path.join(SHARED_DATA, 'dawnlike-1.81')
REFERENCE = os.path.join(SHARED_DATA, 'dawnlike16')


def _rgba_sprite(rng, size=16, colors=4) -> np.ndarray:
  """A random opaque blob with `colors` colors on a transparent square."""
  out = np.zeros((size, size, 4), np.uint8)
  inner = slice(size // 4, size - size // 4)
  mask = rng.random((size // 2, size // 2)) < 0.7
  palette = rng.integers(0, 220, (colors, 3), dtype=np.uint8)
  block = np.zeros((size // 2, size // 2, 4), np.uint8)
  block[mask, :3] = palette[rng.integers(0, colors, mask.sum())]
  block[mask, 3] = 255
  out[inner, inner] = block
  return out


def _save(path, rgba: np.ndarray, mode='RGBA', **kw):
  """Saved as RGBA, or without alpha (mode='RGB') on white, as such files usually are."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(rgba, 'RGBA') if mode == 'RGBA' else Image.fromarray(_on_white(rgba))
  image.convert(mode).save(path, **kw)


def _cfg(data_dir, **kw):
  c = base.get_config().data
  c.data_dir = data_dir
  c.update(kw)
  return c


def _everything(cfg):
  return dataset.load(cfg, 'train'), dataset.load(cfg, 'test')


def _assert_leak_free(train_set, test_set):
  assert not set(train_set.groups) & set(test_set.groups), 'a group crosses the split'
  images = np.concatenate([train_set.images, test_set.images])
  assert len({x.tobytes() for x in images}) == len(images), 'exact duplicates left'
  structure = lambda split: {catalog.structure_key(x) for x in split.images}
  assert not structure(train_set) & structure(test_set), 'a recolored/flipped copy crosses'


# Grouping and splitting on generated sprites.

def _variants(base_rgb: np.ndarray, rng, n: int) -> list[np.ndarray]:
  """What an augmentation makes of one sprite: shifted, flipped, recolored one-to-one, combined."""
  out = []
  for k in range(n):
    v = np.roll(base_rgb, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    v = v[:, ::-1] if k % 2 else v
    v = v[::-1] if k % 3 == 0 else v
    if k % 4:  # a new color for each old one, white background kept
      packed = {c: tuple(rng.integers(0, 220, 3)) for c in map(tuple, v.reshape(-1, 3))}
      v = np.asarray([[(255, 255, 255) if tuple(p) == (255, 255, 255) else packed[tuple(p)]
                       for p in row] for row in v], np.uint8)
    out.append(np.ascontiguousarray(v))
  return out


def _groups_per_base(sprites, names) -> list[set]:
  """For each base sprite (its `origin`), the group names its copies were given."""
  by_base = collections.defaultdict(set)
  for sprite, name in zip(sprites, names):
    by_base[sprite.origin].add(name)
  return list(by_base.values())


def test_augmented_copies_join_their_base_and_distinct_sprites_stay_apart():
  rng = np.random.default_rng(0)
  sprites = []
  for b in range(30):  # 30 bases x 12 copies, each copy its own source group (as in the course file)
    base_rgb = _on_white(_rgba_sprite(rng))
    for k, image in enumerate([base_rgb] + _variants(base_rgb, rng, 11)):
      sprites.append(Sprite(image=image, label=b % 3, group=f'{b * 12 + k:04d}', origin=f'base {b}'))
  names = catalog.group_names(sprites)
  assert all(len(v) == 1 for v in _groups_per_base(sprites, names)), \
      'a copy was not grouped with its base'
  assert len(set(names)) == 30, 'distinct sprites were joined'
  built = catalog.prepare(sprites, 0.2)
  train_groups = {s.group for s in built.splits['train']}
  assert train_groups and not train_groups & {s.group for s in built.splits['test']}


def test_copies_shifted_around_the_tile_join_their_base_though_it_fills_the_tile():
  # np.roll carries what leaves one edge to the other: a sprite drawn to the tile's edges (most of
  # DawnLike's) then has no margin to crop, and the copy must still be found.
  rng = np.random.default_rng(2)
  bases = []
  for _ in range(20):
    base = np.full((16, 16, 3), 255, np.uint8)
    mask = rng.random((16, 16)) < 0.5
    mask[[0, -1], :4] = mask[:4, [0, -1]] = True  # on all four edges
    mask[rng.integers(16)] = False  # one gap, somewhere inside
    base[mask] = rng.integers(0, 220, (4, 3))[rng.integers(0, 4, mask.sum())]
    bases.append(base)
  sprites = []
  for b, base in enumerate(bases):
    copies = [base] + _variants(base, rng, 5) + [np.roll(base, tuple(rng.integers(3, 14, 2)), (0, 1))]
    sprites += [Sprite(image=v, label=0, group=f'{b:02d}{k}', origin=f'base {b}')
                for k, v in enumerate(copies)]
  names = catalog.group_names(sprites)
  assert all(len(v) == 1 for v in _groups_per_base(sprites, names)), \
      'a copy shifted around the tile was missed'
  assert len(set(names)) == 20, 'distinct sprites were joined'


def test_a_recoloring_that_swaps_two_tied_colors_keeps_the_structure():
  # No whole line of one color, and two drawn colors tied for the commonest: which of them is
  # taken as the background must not follow the colors' values, which a recoloring swaps.
  rng = np.random.default_rng(3)
  a = np.full((16, 16, 3), 255, np.uint8)
  order = rng.permutation(256)
  a.reshape(-1, 3)[order[:94]], a.reshape(-1, 3)[order[94:188]] = (10, 20, 30), (200, 100, 50)
  swapped = a.copy()
  first, second = (a == (10, 20, 30)).all(-1), (a == (200, 100, 50)).all(-1)
  swapped[first], swapped[second] = (200, 100, 50), (10, 20, 30)
  assert catalog.structure_key(swapped) == catalog.structure_key(a)
  assert catalog.structure_key(np.roll(swapped, (3, 5), (0, 1))[:, ::-1]) == catalog.structure_key(a)


def test_near_identical_sprites_join_and_duplicates_go():
  rng = np.random.default_rng(1)
  a = _on_white(_rgba_sprite(rng))
  edited = a.copy()
  edited[7, 7] = (0, 0, 0) if tuple(edited[7, 7]) != (0, 0, 0) else (200, 0, 0)  # one pixel changed
  other = _on_white(_rgba_sprite(rng))
  sprites = [Sprite(a, 0, 'a', ''), Sprite(edited, 0, 'b', ''), Sprite(other, 0, 'c', ''),
             Sprite(a.copy(), 1, 'd', '')]
  assert catalog.group_names(sprites) == ['a', 'a', 'c', 'a']
  built = catalog.prepare(sprites, 0.5)
  assert built.duplicates_removed == 1 and built.num_groups == 2


def test_a_retouched_mirror_image_joins_the_original():
  """A flipped copy with a pixel changed: not a shift/flip/recolor (many colors), nor near
  unflipped; found because near-identical pairs are also sought across a mirror."""
  rng = np.random.default_rng(3)
  a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # no small palette: structure keys miss it
  mirror = a[:, ::-1].copy()
  mirror[3, 4] = 255 - mirror[3, 4]
  other = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  sprites = [Sprite(a, 0, 'a', ''), Sprite(mirror, 0, 'b', ''), Sprite(other, 0, 'c', '')]
  assert catalog.group_names(sprites) == ['a', 'a', 'c']


def test_near_pairs_equal_brute_force():
  rng = np.random.default_rng(2)
  images = np.full((300, 16, 16, 3), 255, np.uint8)
  images[:, 4:12, 4:12] = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
  images[150:] = images[:150]
  noise = rng.integers(-6, 7, (150, 16, 16, 3))
  changed = rng.random((150, 16, 16, 1)) < 0.3
  images[150:] = np.clip(images[150:].astype(int) + noise * changed, 0, 255)
  x = images.astype(np.int16)
  mad = np.abs(x[:, None] - x[None]).mean(axis=(2, 3, 4))
  want = {(i, j) for i, j in zip(*np.nonzero(mad <= catalog.NEAR_MAD)) if i < j}
  got = {tuple(sorted(p)) for p in catalog.near_pairs(images).tolist()}
  assert got == want and len(want) > 50


def test_split_keeps_both_sides_for_tiny_data_and_is_deterministic():
  sprites = [Sprite(np.full((2, 2, 3), i, np.uint8), 0, f'g{i}', '') for i in range(3)]
  first = catalog.split(sprites, 0.1)
  assert first['train'] and first['test'] and first == catalog.split(sprites, 0.1)
  reordered = catalog.split(sprites[::-1], 0.1)
  assert {s.group for s in reordered['test']} == {s.group for s in first['test']}
  assert not catalog.split(sprites, 0.0)['test']


# DawnLike (the copy in ../shared, when present).

@pytest.mark.skipif(not os.path.isdir(DAWNLIKE), reason='DawnLike pack not in ../shared/data')
def test_dawnlike_builds_like_the_reference_and_leak_free(data_dir):
  cfg = _cfg(data_dir, source='dawnlike', manual_dir=DAWNLIKE)
  train_set, test_set = _everything(cfg)
  assert train_set.class_names == dawnlike.CLASS_NAMES
  everything = np.concatenate([train_set.images, test_set.images])
  labels = np.concatenate([train_set.labels, test_set.labels])
  reference = np.load(os.path.join(REFERENCE, 'sprites_16x16.npy'))
  ref_labels = np.load(os.path.join(REFERENCE, 'labels.npy'))
  assert len(everything) == len(reference) == 2100
  assert ({(x.tobytes(), int(y)) for x, y in zip(everything, labels)} ==
          {(x.tobytes(), int(y)) for x, y in zip(reference, ref_labels)})
  _assert_leak_free(train_set, test_set)
  assert 0.05 < len(test_set.images) / 2100 < 0.2
  builder = dataset.builder(cfg)
  assert os.path.isfile(os.path.join(builder.data_dir, tfds_builder.PREVIEW))
  assert sum(builder.info.metadata['counts']['test'].values()) == len(test_set.images)


@pytest.mark.skipif(not os.path.isdir(DAWNLIKE), reason='DawnLike pack not in ../shared/data')
def test_dawnlike_animation_frames_share_a_group():
  sprites = list(dawnlike.sprites(DAWNLIKE, 16))
  frames = collections.defaultdict(set)
  for s in sprites:
    frames[s.group].add(s.origin.split()[0])
  assert frames['Characters/Cat/r00c0'] == {'Characters/Cat0.png', 'Characters/Cat1.png'}
  assert not any('Reptile' in s.origin and ' row 13 ' in s.origin for s in sprites), 'text box kept'
  assert any(s.origin == 'Characters/Reptile0.png row 12 col 3 frame 0' for s in sprites), 'Platino'


def test_dawnlike_wrong_folder_is_named(tmp_path, data_dir):
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}.*Characters.*manual_dir'):
    dataset.load(_cfg(data_dir, source='dawnlike', manual_dir=str(tmp_path)))


# Any folder of images, and a single sheet.

def _sprite_folder(root: str, seed: int = 0) -> None:
  """Two classes: 16x16 RGBA PNGs, 16x16 enlarged to 32x32 (shrinks by nearest), 32x32 drawn at
  that size and 24x24 (area), 8x8 (grows), a
  two-frame GIF and a BMP without alpha, a lossless WebP; an exact duplicate and a corrupt file."""
  rng = np.random.default_rng(seed)
  for name in ('hero', 'potion'):
    for i in range(6):
      _save(os.path.join(root, name, f'{i}.png'), _rgba_sprite(rng))
    _save(os.path.join(root, name, 'big.png'), np.repeat(np.repeat(_rgba_sprite(rng), 2, 0), 2, 1))
    _save(os.path.join(root, name, 'native32.png'), _rgba_sprite(rng, 32))  # drawn at 32
    _save(os.path.join(root, name, 'odd.png'), _rgba_sprite(rng, 24))
    _save(os.path.join(root, name, 'tiny.bmp'), _rgba_sprite(rng, 8), 'RGB')
    _save(os.path.join(root, name, 'anim', 'walk.webp'), _rgba_sprite(rng), lossless=True)
    frames = [Image.fromarray(_on_white(_rgba_sprite(rng))) for _ in range(2)]
    frames[0].save(os.path.join(root, name, 'anim', 'walk.gif'), save_all=True,
                   append_images=frames[1:])
  with open(os.path.join(root, 'hero', '0.png'), 'rb') as f, \
       open(os.path.join(root, 'hero', 'copy.png'), 'wb') as g:
    g.write(f.read())
  with open(os.path.join(root, 'potion', 'broken.png'), 'wb') as f:
    f.write(b'\x89PNG not really')


def test_folder_builds_warns_and_is_leak_free(tmp_path, data_dir, caplog):
  root = str(tmp_path / 'sprites')
  _sprite_folder(root)
  with caplog.at_level(logging.INFO):
    train_set, test_set = _everything(_cfg(data_dir, source='folder', manual_dir=root))
  assert train_set.class_names == ('hero', 'potion')
  # 13 sprites per class (the GIF gives two); hero's copy.png is a duplicate, broken.png unreadable.
  assert len(train_set.images) + len(test_set.images) == 2 * 13 and len(test_set.images)
  counts = collections.Counter(np.concatenate([train_set.labels, test_set.labels]).tolist())
  assert counts == {0: 13, 1: 13}
  assert dataset.builder(_cfg(data_dir, source='folder', manual_dir=root)).info.metadata[
      'duplicates_removed'] == 1
  _assert_leak_free(train_set, test_set)
  assert 'broken.png' in caplog.text and 'skipped 1 of 26 files' in caplog.text
  assert 'area-resized' in caplog.text and 'odd.png' in caplog.text
  assert '2 upscale from 8x8' in caplog.text and '2 nearest from 32x32' in caplog.text
  assert '2 area from 32x32' in caplog.text and 'not 16x16 sprites enlarged' in caplog.text
  assert 'native32.png' in caplog.text


def test_a_sprite_drawn_at_32_keeps_its_outline_at_16():
  """Shrinking by one pixel in four is only lossless for an enlarged sprite; a sprite drawn at 32
  with a one-pixel outline would lose two of its four sides."""
  rgb = np.full((32, 32, 3), 255, np.uint8)
  rgb[4:28, 4] = rgb[4:28, 27] = rgb[4, 4:28] = rgb[27, 4:28] = 0  # a 1 px square outline
  assert not is_enlarged(rgb, 16)
  assert is_enlarged(np.repeat(np.repeat(rgb[::2, ::2], 2, 0), 2, 1), 16)
  shrunk = fit(rgb, 16, 'area')
  assert shrunk[2:14, 2].max() < 255 and shrunk[2, 2:14].max() < 255  # left and top still there


def test_folder_at_32_trains_and_samples(tmp_path, data_dir, caplog):
  root = str(tmp_path / 'sprites')
  _sprite_folder(root, seed=1)
  config = tiny_config(data_dir, **{'data.source': 'folder', 'data.manual_dir': root,
                                    'data.image_size': 32, 'sample.gif': False})
  with caplog.at_level(logging.WARNING):
    train.run(config, str(tmp_path / 'run'))
  assert 'odd.png: 24x24 is smaller than 32x32' in caplog.text  # 24 does not divide 32: skipped
  npz = np.load(str(tmp_path / 'run' / 'samples' / 'step000002_ddim4.npz'))
  assert npz['images'].shape == (2, 32, 32, 3) and list(npz['class_names']) == ['hero', 'potion']


def test_unconditional_folder_and_a_sheet_with_a_tile_size(tmp_path, data_dir):
  rng = np.random.default_rng(3)
  sheet = np.zeros((48, 64, 4), np.uint8)
  for row in range(3):
    for col in range(4):
      if (row, col) not in ((0, 1), (2, 3)):  # two blank tiles
        sheet[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = _rgba_sprite(rng)
  sheet[2 * 16 + 5, 3 * 16 + 5] = (0, 0, 0, 255)  # a stray speck is blank too
  path = str(tmp_path / 'sheet.png')
  _save(path, sheet)
  train_set, test_set = _everything(_cfg(data_dir, source='folder', manual_dir=path, tile_size=16))
  assert train_set.class_names == () and set(train_set.labels) == {-1}
  assert len(train_set.images) + len(test_set.images) == 10
  builder = dataset.builder(_cfg(data_dir, source='folder', manual_dir=path, tile_size=16))
  origins = {r['origin'].decode() for r in builder.as_data_source('train')}
  assert origins <= {f'sheet.png row {r} col {c}' for r in range(3) for c in range(4)} - {
      'sheet.png row 0 col 1', 'sheet.png row 2 col 3'}


def _write(path, content=b''):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(content)


def _png(path, size=16, seed=0):
  _save(path, _rgba_sprite(np.random.default_rng(seed), size))


@pytest.mark.parametrize('make, tile_size, message', [
    (lambda r: os.makedirs(r), 0, 'holds no images'),
    (lambda r: _write(os.path.join(r, 'notes.txt'), b'hi'), 0, 'holds no images'),
    (lambda r: _write(os.path.join(r, 'photo.JPG'), b'jpeg'), 0,
     r'holds no images .*1 JPEG file\(s\) are not read \(e.g. .*photo\.JPG\).*save them as PNG'),
    (lambda r: (_png(os.path.join(r, 'a', 'x.png')), _write(os.path.join(r, 'b', 'y.jpeg'))), 0,
     r'class folder .*/b has no images.*1 JPEG file\(s\) are not read \(e.g. .*/b/y\.jpeg'),
    (lambda r: (_png(os.path.join(r, 'a', 'x.png')), os.makedirs(os.path.join(r, 'b'))), 0,
     r'class folder .*/b has no images'),
    (lambda r: _write(os.path.join(r, 'x.png'), b'junk'), 0, r'nothing usable in .*x\.png'),
    (lambda r: (_png(os.path.join(r, 'a', 'x.png')), _write(os.path.join(r, 'b', 'y.gif'), b'junk')), 0,
     r'no usable image in class folder .*/b\b.*y\.gif'),
    (lambda r: _png(os.path.join(r, 'sheet.png'), 40), 16,
     r'sheet\.png \(is 40x40, not a whole number of 16x16'),
    (lambda r: _save(os.path.join(r, 'wide.png'), np.zeros((16, 32, 4), np.uint8) + 9), 0,
     r'wide\.png \(32x16 is not square'),
    (lambda r: _png(os.path.join(r, 'x.png'), 12), 0, r'x\.png \(12x12 is smaller than 16x16'),
    (lambda r: (_png(os.path.join(r, 'x.png')), _png(os.path.join(r, 'a', 'y.png'))), 0,
     'both images .*x.png.* and class folders'),
])
def test_bad_folders_fail_by_name_and_leave_nothing(tmp_path, data_dir, make, tile_size, message):
  root = str(tmp_path / 'sprites')
  make(root)
  cfg = _cfg(data_dir, source='folder', manual_dir=root, tile_size=tile_size)
  with pytest.raises(ValueError, match=message):
    dataset.load(cfg)
  builder = dataset.builder(cfg)
  assert not builder.is_prepared() and not os.path.exists(builder.data_dir)


def test_jpegs_beside_pngs_are_named_as_not_read(tmp_path, data_dir, caplog):
  root = str(tmp_path / 'sprites')
  for k in range(3):
    _png(os.path.join(root, f'{k}.png'), seed=k)
  _write(os.path.join(root, 'photo.jpg'), b'jpeg')
  with caplog.at_level(logging.WARNING):
    assert len(dataset.load(_cfg(data_dir, source='folder', manual_dir=root), 'train').images) >= 2
  assert any('1 JPEG file(s) are not read' in r.getMessage() and 'photo.jpg' in r.getMessage()
             for r in caplog.records)


def test_a_sheet_file_needs_a_tile_size(tmp_path, data_dir):
  _png(str(tmp_path / 'sheet.png'), 64)
  with pytest.raises(ValueError, match=r'sheet\.png is a file.*tile_size'):
    dataset.load(_cfg(data_dir, source='folder', manual_dir=str(tmp_path / 'sheet.png')))


def test_a_single_class_warns_and_builds(tmp_path, data_dir, caplog):
  for i in range(3):
    _png(str(tmp_path / 'only' / f'{i}.png'), seed=i)
  with caplog.at_level(logging.WARNING):
    train_set = dataset.load(_cfg(data_dir, source='folder', manual_dir=str(tmp_path)))
  assert train_set.class_names == ('only',) and 'single class folder (only)' in caplog.text


def test_an_edited_folder_is_a_new_dataset(tmp_path):
  _png(str(tmp_path / 'a.png'))
  before = tfds_builder.make_config(source='folder', manual_dir=str(tmp_path)).name
  _png(str(tmp_path / 'b.png'), seed=1)
  assert tfds_builder.make_config(source='folder', manual_dir=str(tmp_path)).name != before


@pytest.mark.parametrize('source', ['course', 'dawnlike', 'folder'])
def test_only_the_files_a_source_reads_name_its_dataset(tmp_path, source):
  """A log, a workdir or a TFDS data_dir kept in the data folder must not rebuild the dataset."""
  data = {'course': ['sprites_1788_16x16.npy', 'sprite_labels_nc_1788_16x16.npy'],
          'dawnlike': ['Characters/Cat0.png', 'Items/Food.png', 'Objects/Wall.png'],
          'folder': ['cats/a.png', 'dogs/b.png']}[source]
  for i, name in enumerate(data):
    _write(str(tmp_path / name), bytes([i]))
  name = lambda: tfds_builder.make_config(source=source, manual_dir=str(tmp_path)).name
  before = name()
  _write(str(tmp_path / 'run.log'), b'step 100')
  _write(str(tmp_path / 'tfds' / 'sprites' / 'dataset_info.json'), b'{}')
  _write(str(tmp_path / 'runs' / 'checkpoints' / '400' / 'state'), b'x')
  if source != 'folder':  # in a folder source any image is a sprite; in DawnLike, Objects/ is not read
    _write(str(tmp_path / 'runs' / 'samples' / 'grid.png'), b'png')
  if source == 'dawnlike':
    _write(str(tmp_path / 'Objects' / 'Wall.png'), b'edited')
  assert name() == before
  _write(str(tmp_path / data[0]), b'edited')
  assert name() != before


def test_an_edit_behind_a_linked_class_folder_is_a_new_dataset(tmp_path):
  """The name hashes exactly what the folder source reads, class folders reached by a link too."""
  _png(str(tmp_path / 'real' / 'cats' / 'a.png'))
  _png(str(tmp_path / 'sprites' / 'dogs' / 'b.png'), seed=1)
  os.symlink(tmp_path / 'real' / 'cats', tmp_path / 'sprites' / 'cats')
  name = lambda: tfds_builder.make_config(source='folder', manual_dir=str(tmp_path / 'sprites')).name
  before = name()
  _png(str(tmp_path / 'real' / 'cats' / 'c.png'), seed=2)
  assert name() != before


def test_a_second_process_building_the_same_dataset_waits_and_reads_the_first_build(
    tmp_path, data_dir):
  """Two launches sharing a data_dir: the lock makes the second wait, then find the build."""
  import fcntl  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  root = str(tmp_path / 'sprites')
  for i in range(4):
    _png(os.path.join(root, 'a' if i % 2 else 'b', f'{i}.png'), seed=i)
  cfg = _cfg(str(tmp_path / 'tfds'), source='folder', manual_dir=root)
  b = dataset.builder(cfg)
  folder = os.path.join(str(tmp_path / 'tfds'), b.name)
  os.makedirs(folder)
  loaded = []
  with open(os.path.join(folder, f'{b.builder_config.name}.lock'), 'w') as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # another process is building
    worker = threading.Thread(target=lambda: loaded.append(dataset.load(cfg)))
    worker.start()
    worker.join(2.0)
    assert worker.is_alive() and not loaded, 'it waits while the lock is held'
  worker.join(60)
  assert loaded and len(loaded[0].images) + len(dataset.load(cfg, 'test').images) == 4


def test_a_sheet_keyed_on_magenta_is_named_in_a_warning(tmp_path, data_dir, caplog):
  """No transparency and a non-white border color: the key color would be learnt, so say so."""
  rng = np.random.default_rng(0)
  sheet = np.zeros((32, 64, 4), np.uint8)
  sheet[..., :3], sheet[..., 3] = (255, 0, 255), 255
  for col in range(3):
    sprite = _rgba_sprite(rng)
    opaque = sprite[..., 3] == 255
    sheet[:16, col * 16:(col + 1) * 16][opaque] = sprite[opaque]
  _save(str(tmp_path / 'keyed.png'), sheet)
  _save(str(tmp_path / 'clear.png'), np.where(sheet[..., :1] == 255, 0, sheet).astype(np.uint8))
  with caplog.at_level(logging.WARNING):
    dataset.load(_cfg(data_dir, source='folder', manual_dir=str(tmp_path), tile_size=16))
  assert "1 images have no transparency and a #ff00ff background" in caplog.text
  assert 'keyed.png' in caplog.text and 'clear.png' not in caplog.text.split('#ff00ff')[1]
