"""Loading sprites: build the TFDS dataset once, then hold a whole split in memory."""
import dataclasses
import fcntl
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from experiments.data import tfds_builder
from experiments.runtime import files, hosts


@dataclasses.dataclass(frozen=True)
class SpriteData:
  images: np.ndarray        # uint8 [N, S, S, 3], RGB on white
  labels: np.ndarray        # int32 [N]; -1 for an unconditional dataset
  groups: np.ndarray        # int32 [N]; sprites of one group are variants of each other
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def check_outputs_outside(data_cfg, workdir: str) -> None:
  """A folder source reads every image under data.manual_dir, so a workdir or data_dir inside it
  would feed the run's own pictures (samples, previews) back in as sprites of a new class and
  rebuild the dataset on the next load. Refuse that before anything is written."""
  if data_cfg.source != 'folder' or not data_cfg.manual_dir:  # none: the build says what to pass
    return
  folder = os.path.realpath(os.path.expanduser(data_cfg.manual_dir))
  if not os.path.isdir(folder):
    return
  for what, path in (('--workdir', workdir), ('data.data_dir', data_cfg.data_dir)):
    path = os.path.realpath(os.path.expanduser(path))  # links resolved on both sides
    if os.path.commonpath([folder, path]) == folder:
      raise ValueError(
          f'{what}={path} is inside data.manual_dir={folder}: the folder source reads every image '
          f'under it, so this run\'s own pictures would become sprites. Put {what} outside '
          'the sprite folder.')


def builder(data_cfg) -> tfds_builder.Sprites:
  config = tfds_builder.make_config(
      source=data_cfg.source, manual_dir=data_cfg.manual_dir, image_size=data_cfg.image_size,
      tile_size=data_cfg.tile_size, test_fraction=data_cfg.test_fraction)
  data_dir = os.path.expanduser(data_cfg.data_dir)
  return tfds_builder.Sprites(config=config, data_dir=data_dir, file_format='array_record')


def _build(data_cfg) -> tfds_builder.Sprites:
  """The prepared builder, built first if need be. Two runs sharing a data_dir (two launches, two
  sweep shards) take turns through a lock file: the second finds the first's build instead of
  failing to rename its own copy into place."""
  b = builder(data_cfg)
  if b.is_prepared():
    return b
  folder = os.path.join(os.path.expanduser(data_cfg.data_dir), b.name)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f'{b.builder_config.name}.lock'), 'w', encoding='utf-8') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
    b = builder(data_cfg)
    if not b.is_prepared():
      logging.info('Preparing sprites dataset %s in %s (once).', b.builder_config.name, b.data_dir)
      tfds.display_progress_bar(False)  # the build prints its own summary
      b.download_and_prepare()
  return b


def _prepared(data_cfg) -> tfds_builder.Sprites:
  """The builder of the prepared dataset. Process 0 builds it while the others wait: several
  processes building one folder at once fail renaming it into place."""
  return hosts.writer_first('dataset', lambda: _build(data_cfg))


def _missing_split(b: tfds_builder.Sprites, split: str) -> str:
  """Why the prepared dataset has no `split`, and what to do about it."""
  name, cfg = f'{b.name}/{b.builder_config.name}', b.builder_config
  if split == 'test':
    why, fix = ((f'data.test_fraction={cfg.test_fraction} holds none out',
                 'train with --config.data.test_fraction=0.1 (the dataset is built again, once; '
                 'a model trained on every sprite has no held-out ones to be judged against)')
                if cfg.test_fraction == 0 else
                ('all its sprites are variants of one group, and a group is never split',
                 'add sprites that are not variants of each other'))
    return (f'The dataset {name} has no `test` split: {why}. The evaluation (--mode=eval, and '
            'eval.at_end or train.eval_every when training) compares samples with held-out '
            f'sprites: {fix}, or train with --config.eval.at_end=False.')
  if split == 'train':
    return (f'The dataset {name} in {b.data_dir} has no `train` split: every sprite was held out '
            '(builds before this version did so when all sprites were variants of one group). '
            f'Delete {b.data_dir} so that it is built again.')
  return f'The dataset {name} has no split {split!r}; it has: {", ".join(b.info.splits)}.'


def split_size(data_cfg, split: str = 'train') -> int:
  """How many sprites `split` holds, from the prepared dataset's metadata (no sprite read);
  a ValueError saying why and what to do if the configured dataset has no `split`."""
  b = _prepared(data_cfg)
  if split not in b.info.splits:
    raise ValueError(_missing_split(b, split))
  return b.info.splits[split].num_examples


def load(data_cfg, split: str = 'train') -> SpriteData:
  """The whole `split` of the configured source, built first if it is not prepared yet."""
  b = _prepared(data_cfg)
  if split not in b.info.splits:
    raise ValueError(_missing_split(b, split))
  source = b.as_data_source(split=split)
  records = source.__getitems__(list(range(len(source))))
  class_names = tuple(b.info.metadata['class_names'])
  return SpriteData(
      images=np.stack([r['image'] for r in records]) if records else
      np.zeros((0, data_cfg.image_size, data_cfg.image_size, 3), np.uint8),
      labels=np.asarray([r['label'] for r in records], np.int32),
      groups=np.asarray([r['group'] for r in records], np.int32),
      class_names=class_names)


def to_model(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255], clipped."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def context(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """One-hot float32 context vectors; label -1 (or no classes) gives the null (zero) context.

  Raises ValueError for labels that are not a 1-D array of integers in [-1, num_classes).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
    raise ValueError(f'labels must be a 1-D array of integers, got {labels.dtype} '
                     f'{list(labels.shape)}.')
  if np.any((labels < -1) | (labels >= num_classes)):
    raise ValueError(f'labels must be -1 (no class) or a class index below {num_classes}; got '
                     f'values from {labels.min()} to {labels.max()}.')
  out = np.zeros((len(labels), max(num_classes, 1)), np.float32)
  valid = labels >= 0
  out[np.flatnonzero(valid), labels[valid]] = 1.0
  return out


def digest(data: SpriteData) -> str:
  """A fingerprint of a split's sprites and labels, in any order: what a workdir was trained on,
  wherever the data folder lives and whenever it was built."""
  n = len(data.images)
  rows = np.concatenate([data.images.reshape(n, -1).view(np.uint8),
                         data.labels.astype('<i4').reshape(n, 1).view(np.uint8)], axis=1)
  rows = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()
  return hashlib.sha256(np.sort(rows).tobytes()).hexdigest()[:16]


def record(data: SpriteData) -> dict:
  """What <workdir>/data.json records of the training split."""
  return {'class_names': list(data.class_names), 'train_size': len(data.images),
          'train_digest': digest(data), 'dataset_version': str(tfds_builder.Sprites.VERSION)}


def check_trained_on(workdir: str, train: SpriteData, purpose: str) -> None:
  """Raise ValueError if <workdir>/data.json records another training split than `train`: an
  edited folder, or other data.* settings (a new test_fraction moves sprites between the splits),
  would let held-out sprites be ones the model learnt, or resume on other sprites. Workdirs
  trained before the record are not checked."""
  path = os.path.join(workdir, 'data.json')
  recorded = files.read_record(path)
  if recorded.get('train_digest') in (None, digest(train)):
    return
  then, now = recorded.get('dataset_version'), str(tfds_builder.Sprites.VERSION)
  if then == now:
    cause = 'the data folder or data.* changed'
  elif then:  # the split is a function of the code's grouping too (the builder's release notes)
    cause = (f'this code groups variants anew (dataset version {then} then, {now} now; the data '
             'folder or data.* may have changed as well)')
  else:  # recorded before the version was
    cause = ('the data folder or data.* changed (or, after an update of this code, how it groups '
             f'variants: dataset version {now} now)')
  raise ValueError(
      f'{workdir} was trained on another training split ({recorded.get("train_size")} sprites, '
      f'recorded in {path}) than these data.* settings give ({len(train.images)} sprites): '
      f'{cause}, so {purpose}. Use the data and data.* settings that trained it (and the code, '
      'for an older dataset version), or another --workdir. Nothing in the workdir was changed.')


def recorded_class_names(data_cfg, workdir: str) -> tuple[str, ...]:
  """The class names training recorded in <workdir>/data.json, or the prepared dataset's."""
  path = os.path.join(workdir, 'data.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return tuple(json.load(f)['class_names'])
  return tuple(_prepared(data_cfg).info.metadata['class_names'])
