"""The `sprites` TFDS dataset: one builder, one config per source, folder and image size.

Features are `tfds.features.Tensor` and files `array_record`, so neither building nor
reading needs TensorFlow. A config's name carries the source, the size and a hash of the
source path, the files the source reads (names, sizes, times) and the options, so two folders,
or one folder before and after an edit, never share a prepared dataset.

TFDS writes into an `incomplete.*` folder and renames it only when every split is written,
and every source is read in full (and checked) before the first example is written, so a
failed build leaves nothing that loads. Each build also writes `preview.png` (a row per
class) beside the data and prints its counts once; they are in `info.metadata` too.
"""
import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from diffusion import registry
from experiments.data.sources import catalog, course, dawnlike, emoji, folder
from experiments.pictures import canvas


@dataclasses.dataclass
class SpritesConfig(tfds.core.BuilderConfig):
  source: str = 'emoji'
  manual_dir: str = ''
  image_size: int = 16
  tile_size: int = 0
  test_fraction: float = 0.1


SOURCES = {
    'emoji': (lambda cfg: emoji.CLASS_NAMES, lambda cfg: emoji.sprites(cfg.image_size)),
    'course': (lambda cfg: course.CLASS_NAMES,
               lambda cfg: course.sprites(cfg.manual_dir, cfg.image_size)),
    'dawnlike': (lambda cfg: dawnlike.CLASS_NAMES,
                 lambda cfg: dawnlike.sprites(cfg.manual_dir, cfg.image_size)),
    'folder': (lambda cfg: folder.class_names(cfg.manual_dir),
               lambda cfg: folder.sprites(cfg.manual_dir, cfg.image_size, cfg.tile_size)),
}
LICENSES = {'emoji': emoji.LICENSE, 'dawnlike': dawnlike.LICENSE}
PREVIEW = 'preview.png'


def _class_names(cfg: SpritesConfig) -> list[str]:
  return list(SOURCES[cfg.source][0](cfg))


def _source_files(source: str, manual_dir: str) -> list[str]:
  """The files a source reads from manual_dir: only they enter the dataset's name, so a log, a
  workdir or a TFDS data_dir kept in the same folder does not make every run build it again."""
  if source == 'emoji' or not manual_dir:
    return []
  if source == 'course':
    return [os.path.join(manual_dir, name) for name in (course.IMAGES, course.LABELS)]
  if source == 'dawnlike':
    return dawnlike.sheet_files(manual_dir)
  try:
    return [path for path, _ in folder.scan(manual_dir)[1]]  # what the build reads, links followed
  except ValueError:  # a layout the build refuses, with this message, when it reads the folder
    return folder.images_under(manual_dir)


def _fingerprint(paths: list[str]) -> str:
  """Names, sizes and modification times of `paths` (a missing one as such: its source says so
  when it is read)."""
  entries = []
  for path in paths:
    stat = os.stat(path) if os.path.isfile(path) else None
    entries.append(f'{path}:{stat.st_size}:{stat.st_mtime_ns}' if stat else f'{path}:missing')
  return hashlib.sha256('\n'.join(entries).encode()).hexdigest() if entries else ''


def _check_manual_dir(source: str, manual_dir: str, tile_size: int) -> None:
  if source == 'emoji':
    if manual_dir:  # a folder passed without its source would train on emoji without a word
      raise ValueError(f'data.manual_dir={manual_dir} is given, but data.source=emoji (the '
                       'default) draws its sprites from PyPI and reads no folder: add '
                       '--config.data.source=folder (or dawnlike, course: README, Data) to train '
                       'on it, or drop data.manual_dir.')
    return
  if not manual_dir:
    raise ValueError(f'data.source={source} reads files from a folder: pass '
                     '--config.data.manual_dir=FOLDER.')
  if source == 'folder' and os.path.isfile(manual_dir):
    if tile_size <= 0:
      raise ValueError(f'data.manual_dir={manual_dir} is a file: to slice it as a sprite sheet pass '
                       '--config.data.tile_size=N (its tile size); otherwise pass its folder.')
    return
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'data.manual_dir={manual_dir} is not a folder.')


def make_config(*, source: str, manual_dir: str = '', image_size: int = 16, tile_size: int = 0,
                test_fraction: float = 0.1) -> SpritesConfig:
  registry.check(source, sorted(SOURCES), 'data.source')
  if image_size < 1 or tile_size < 0 or not 0 <= test_fraction < 1:
    raise ValueError(f'data.image_size={image_size} must be >= 1, data.tile_size={tile_size} >= 0 '
                     f'and data.test_fraction={test_fraction} in [0, 1).')
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else ''
  _check_manual_dir(source, manual_dir, tile_size)
  files = _fingerprint(_source_files(source, manual_dir))
  options = f'{manual_dir}|{files}|{tile_size}|{test_fraction}'
  digest = hashlib.sha256(options.encode()).hexdigest()[:8]
  return SpritesConfig(name=f'{source}_{image_size}_{digest}', source=source,
                       manual_dir=manual_dir, image_size=image_size, tile_size=tile_size,
                       test_fraction=test_fraction,
                       description=f'{source} sprites from {manual_dir or "PyPI"}')


def preview(splits: dict, class_names: list[str], per_class: int = 16) -> np.ndarray:
  """One row per class (or 8 rows for an unconditional set) of sprites spread evenly over it."""
  everything = [s for part in splits.values() for s in part]
  labels = list(range(len(class_names))) or [-1]
  rows = []
  for label in labels:
    members = [s.image for s in everything if s.label == label]
    count = per_class if class_names else per_class * 8
    picks = np.unique(np.linspace(0, len(members) - 1, min(count, len(members))).round().astype(int))
    blank = np.full_like(everything[0].image, 255)
    rows += [members[i] for i in picks] + [blank] * (count - len(picks))
  return canvas.grid(np.stack(rows), len(labels) if class_names else 8, background=160)


class _LocalInfo(tfds.core.DatasetInfo):
  """Sprites are never on TFDS's storage bucket, and TFDS's look there (disabled anyway) leaves
  an empty temporary folder behind each time a builder of an unprepared dataset is made."""

  def initialize_from_bucket(self) -> None:
    pass


class Sprites(tfds.core.GeneratorBasedBuilder):
  """Sprites, RGB on white, with a class label, a group id (split by group) and their origin."""
  VERSION = tfds.core.Version('1.4.0')
  RELEASE_NOTES = {'1.4.0': 'Copies shifted around the tile (np.roll) are grouped with their base '
                            'too, also where the sprite reaches the tile\'s edges; a recolored '
                            'copy\'s background is the color of the most whole lines, not of the '
                            'border (a folder of tiles without margins may group anew).',
                   '1.3.0': 'Folder sprites drawn larger than image_size are area-resized, not '
                            'decimated (only enlarged ones shrink by nearest neighbour).',
                   '1.2.0': 'Near-identical variants are also found across a horizontal flip.',
                   '1.1.0': 'DawnLike and folder sources; variants grouped; origin kept; preview.',
                   '1.0.0': 'Emoji and course sources.'}

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return _LocalInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
            'label': tfds.features.Tensor(shape=(), dtype=np.int64),
            'group': tfds.features.Tensor(shape=(), dtype=np.int64),
            'origin': tfds.features.Tensor(shape=(), dtype=np.str_),  # file, sheet row/col, index
        }),
        metadata=tfds.core.MetadataDict(),
        description=self.builder_config.description)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    names = _class_names(cfg)
    built = catalog.prepare(SOURCES[cfg.source][1](cfg), cfg.test_fraction)
    splits = {name: part for name, part in built.splits.items() if part}
    if not splits:
      raise ValueError(f'data.source={cfg.source}: no usable sprites found in {cfg.manual_dir}.')
    if 'test' not in splits and cfg.test_fraction > 0:
      logging.warning('data.source=%s: all %d sprites form one group of variants, so there is no '
                      '`test` split.', cfg.source, len(splits['train']))
    counts = catalog.counts(splits, names)
    self.info.metadata.update(
        class_names=names, counts=counts, duplicates_removed=built.duplicates_removed,
        num_groups=built.num_groups, license=LICENSES.get(cfg.source, ''))
    canvas.save_png(os.path.join(self.data_dir, PREVIEW), preview(splits, names), 4)
    self._summary = (f'Built {self.name}/{cfg.name}: {sum(map(len, splits.values())):,} sprites in '
                     f'{built.num_groups:,} groups of variants, {built.duplicates_removed:,} exact '
                     f'duplicates removed.\n{catalog.summary(counts, names)}')
    groups = {name: i for i, name in enumerate(sorted({s.group for p in splits.values() for s in p}))}
    return {name: self._generate_examples(part, groups) for name, part in splits.items()}

  def _generate_examples(self, sprites, groups):
    for i, sprite in enumerate(sprites):
      yield i, {'image': sprite.image, 'label': sprite.label, 'group': groups[sprite.group],
                'origin': sprite.origin}

  def _post_download_and_prepare_hook(self) -> None:
    """Runs only after the dataset was written and renamed into place: print its counts once."""
    print(f'{self._summary}\nPreview: {os.path.join(self.data_dir, PREVIEW)}', flush=True)

  # TFDS's own lines before and after a build ("Downloading and preparing dataset Unknown
  # size (download: Unknown size, ...)"): nothing is downloaded; the summary above says what was.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass
