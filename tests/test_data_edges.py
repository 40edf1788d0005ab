"""Data edge cases: a single group of variants, no test split, 16-bit PNGs, a first build's log."""
import logging
import tempfile

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from experiments import evaluate
from experiments.data import dataset
from experiments.data.sources import catalog, folder
from experiments.runtime import logs


def _sprite(value: int) -> np.ndarray:
  image = np.full((16, 16, 3), 255, np.uint8)
  image[4:12, 4:12] = value
  return image


def test_a_single_group_of_variants_trains_and_eval_says_why_there_is_no_test(tmp_path, data_dir):
  root = tmp_path / 'one_group'
  root.mkdir()
  for k in range(3):  # one pixel apart: variants of one sprite, never split
    image = _sprite(40)
    image[0, k] = 0
    Image.fromarray(image).save(root / f'knight{k}.png')
  config = tiny_config(data_dir, **{'data.source': 'folder', 'data.manual_dir': str(root),
                                    'data.test_fraction': 0.5})
  assert len(dataset.load(config.data, 'train').images) == 3
  with pytest.raises(ValueError, match='variants of one group'):
    dataset.load(config.data, 'test')


def test_one_group_is_never_held_out():
  sprites = [catalog.Sprite(image=_sprite(9), label=-1, group='g', origin=str(k)) for k in range(3)]
  for fraction in (0.0, 0.5, 0.99):
    parts = catalog.split(sprites, fraction)
    assert len(parts['train']) == 3 and not parts['test']


def test_eval_without_a_test_split_names_the_fix(tmp_path, data_dir):
  config = tiny_config(data_dir, **{'data.test_fraction': 0.0})
  with pytest.raises(ValueError, match=r'data.test_fraction=0.0 holds none out.*test_fraction=0.1'):
    evaluate.run(config, str(tmp_path / 'run'))


def test_16_bit_grayscale_pngs_are_scaled_not_saturated(tmp_path):
  gray16 = np.zeros((16, 16), np.uint16)
  gray16[4:12, 4:12] = 128 * 257  # mid-gray in 16 bits
  gray16[0, 0] = 65535
  Image.fromarray(gray16).save(tmp_path / 'gray16.png')
  assert Image.open(tmp_path / 'gray16.png').mode.startswith('I')
  (sprite,) = folder.sprites(str(tmp_path), 16)
  np.testing.assert_array_equal(sprite.image[6, 6], [128, 128, 128])
  np.testing.assert_array_equal(sprite.image[0, 0], [255, 255, 255])
  np.testing.assert_array_equal(sprite.image[0, 1], [0, 0, 0])


def test_a_built_dataset_without_a_train_split_says_to_rebuild(data_dir):
  b = dataset.builder(tiny_config(data_dir).data)
  message = dataset._missing_split(b, 'train')  # pylint: disable=protected-access
  assert 'no `train` split' in message and f'Delete {b.data_dir}' in message


def test_making_a_builder_leaves_no_temporary_folder(tmp_path, monkeypatch):
  # TFDS's DatasetInfo looks for an unprepared dataset on its bucket through an empty temporary
  # folder it never removes: the test suite alone left thousands in /tmp.
  temp = tmp_path / 'temp'
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  b = dataset.builder(tiny_config(str(tmp_path / 'data')).data)
  assert not b.is_prepared() and not list(temp.iterdir())


def test_a_first_builds_routine_tfds_lines_stay_out_of_the_log(tmp_path, capsys):
  """TFDS warns that the folder it is about to build has no dataset_info.json: routine on a fresh
  machine, so the launcher's filter drops it, and lets the library's other warnings through. Its
  "Downloading and preparing dataset Unknown size" lines give way to the build's own summary."""
  root = tmp_path / 'sprites'
  root.mkdir()
  for value in (40, 200):
    Image.fromarray(_sprite(value)).save(root / f'sprite{value}.png')
  config = tiny_config(str(tmp_path / 'tfds'), **{'data.source': 'folder',
                                                  'data.manual_dir': str(root)})

  class Keep(logging.Handler):
    def __init__(self):
      super().__init__()
      self.messages = []

    def emit(self, record):
      self.messages.append(record.getMessage())

  everything, kept = Keep(), Keep()
  kept.addFilter(logs._QuietLibraries())
  absl_logger = logging.getLogger('absl')
  for handler in (everything, kept):
    absl_logger.addHandler(handler)
  try:
    dataset.load(config.data, 'train')
  finally:
    for handler in (everything, kept):
      absl_logger.removeHandler(handler)
  assert any(m.startswith('Variant folder') for m in everything.messages)
  assert not any(m.startswith('Variant folder') for m in kept.messages)
  tfds_file = '/site-packages/tensorflow_datasets/core/dataset_builder.py'
  real = logging.LogRecord('absl', logging.WARNING, tfds_file, 1, 'Dataset corrupted', (), None)
  assert kept.filter(real)
  printed = capsys.readouterr().out
  assert 'Built sprites/' in printed
  assert 'Unknown size' not in printed and 'Dataset sprites' not in printed
