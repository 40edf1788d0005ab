"""The course's own files: sprites_1788_16x16.npy and sprite_labels_nc_1788_16x16.npy.

Images: uint8 [N, 16, 16, 3], RGB on white. Labels: one-hot float [N, 5] over
hero, non-hero, food, spell, side-facing. Both are checked before anything is built.
"""
import os
from typing import Iterator

import numpy as np

from experiments.data.sources.images import Sprite

IMAGES = 'sprites_1788_16x16.npy'
LABELS = 'sprite_labels_nc_1788_16x16.npy'
CLASS_NAMES = ('hero', 'non-hero', 'food', 'spell', 'side-facing')


def _load(folder: str, name: str) -> np.ndarray:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Course data: {path} not found. Put the course files {IMAGES} and {LABELS} in one '
        f'folder and pass it as --config.data.manual_dir=FOLDER.')
  try:
    array = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:  # not .npy, truncated, pickled objects
    raise ValueError(f'Course data: {path} is not a readable .npy array ({e}).') from e
  if not isinstance(array, np.ndarray):  # an .npz archive under the .npy name
    array.close()
    raise ValueError(f'Course data: {path} is an .npz archive, not one .npy array.')
  return array


def load_arrays(folder: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N,16,16,3], labels int [N]) after checking shapes, dtypes and one-hotness."""
  images, onehot = _load(folder, IMAGES), _load(folder, LABELS)
  path = os.path.join(folder, IMAGES)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (16, 16, 3):
    raise ValueError(f'Course data: {path} has dtype {images.dtype} and shape {images.shape}; '
                     'expected uint8 [N, 16, 16, 3] (RGB sprites).')
  path = os.path.join(folder, LABELS)
  if onehot.ndim != 2 or onehot.shape[1] != len(CLASS_NAMES):
    raise ValueError(f'Course data: {path} has shape {onehot.shape}; expected one-hot '
                     f'[N, {len(CLASS_NAMES)}] over {", ".join(CLASS_NAMES)}.')
  if len(onehot) != len(images):
    raise ValueError(f'Course data: {len(images)} images in {IMAGES} but {len(onehot)} labels '
                     f'in {LABELS} (in {folder}); the two files must have one row per sprite.')
  if not (np.all((onehot == 0) | (onehot == 1)) and np.all(onehot.sum(axis=1) == 1)):
    bad = int(np.flatnonzero(~np.all((onehot == 0) | (onehot == 1), axis=1) | (onehot.sum(1) != 1))[0])
    raise ValueError(f'Course data: {path} row {bad} is {onehot[bad].tolist()}; every row must be '
                     'one-hot (a single 1, zeros elsewhere).')
  return images, np.argmax(onehot, axis=1)


def sprites(folder: str, image_size: int) -> Iterator[Sprite]:
  if image_size != 16:
    raise ValueError(f'The course data is 16x16; got data.image_size={image_size}. '
                     'Use --config.data.image_size=16 with --config.data.source=course.')
  images, labels = load_arrays(folder)
  for i, (image, label) in enumerate(zip(images, labels)):
    yield Sprite(image=image, label=int(label), group=f'{i}', origin=f'{IMAGES}[{i}]')
