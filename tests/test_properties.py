"""Property-based tests: malformed arrays, shapes, dtypes, labels, files and config values get an
error that names the key or file, raised by this project's checks, never from inside a library."""
import io
import os
import tempfile
import traceback

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from configs import sprites
from diffusion import schedules
from experiments import config_checks, evaluate, from_config
from experiments.data import dataset
from experiments.data.sources import course, folder
from experiments.runtime import drawing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = tuple(os.path.join(ROOT, part) + os.sep for part in ('experiments', 'diffusion', 'configs'))
# Few fixed examples keep the suite fast and repeatable; SPRITES_HYPOTHESIS_EXAMPLES=2000 hunts deeper.
DEEP = int(os.environ.get('SPRITES_HYPOTHESIS_EXAMPLES', 0))
FEW = settings(max_examples=DEEP or 30, deadline=None, derandomize=not DEEP, database=None,
               suppress_health_check=[HealthCheck.too_slow])


def assert_named(error: BaseException, *names: str) -> None:
  """`error` is a ValueError or FileNotFoundError raised by our code that names each of `names`."""
  assert isinstance(error, (ValueError, FileNotFoundError)), repr(error)
  frame = traceback.extract_tb(error.__traceback__)[-1]
  assert frame.filename.startswith(OURS), f'raised inside a library: {frame.filename}\n{error}'
  for name in names:
    assert name in str(error), f'{name!r} not in {error}'


def _with(key: str, value):
  config = sprites.get_config('smoke')
  section, _, name = key.rpartition('.')
  try:
    (config[section] if section else config)[name] = value
  except TypeError:  # a wrong type fails at flag parsing already (tests/test_config.py)
    assume(False)
  return config


def _numbers_like(value):
  ints = st.integers(-2**40, 2**40)
  return ints if isinstance(value, int) else st.one_of(st.floats(), ints.map(float))


@FEW
@given(st.data())
def test_any_number_for_any_key_is_accepted_or_refused_by_name(data):
  key = data.draw(st.sampled_from(sorted(config_checks.RANGES)))
  value = data.draw(_numbers_like(config_checks.get(sprites.get_config('smoke'), key)))
  config = _with(key, value)
  try:
    from_config.validate(config)
  except ValueError as e:
    assert_named(e, key)
    return
  for name in schedules.SCHEDULES:  # what it accepts gives usable noise schedules ...
    config.diffusion.schedule = name
    grid = np.asarray(schedules.discretize(from_config.logsnr_fn(config.diffusion), 32))
    assert not np.any(np.isnan(grid)), (name, key, value)
  lr = from_config.learning_rate(config.train)  # ... and learning rates
  assert all(np.isfinite(lr(s)) and lr(s) >= 0 for s in (0, config.train.steps))


NAMED = sorted(config_checks.NAMES) + ['model.dtype', 'train.lr_schedule']


@FEW
@given(key=st.sampled_from(NAMED), text=st.text(max_size=12))
def test_any_name_for_a_registry_key_is_accepted_or_refused_by_name(key, text):
  config = _with(key, text)
  try:
    from_config.validate(config)
  except ValueError as e:
    assert_named(e, key)


MIX_TEXT = st.one_of(st.text(max_size=20),
                     st.text(alphabet=st.sampled_from(list('ab19:;,.-e ')), max_size=20))


@FEW
@given(spec=MIX_TEXT)
def test_any_mix_is_parsed_or_refused_by_name(spec):
  try:
    from_config.validate(_with('sample.mix', spec))
    vectors = drawing.parse_mix(spec, ['a', 'b', 'c'])
  except ValueError as e:
    assert_named(e, 'sample.mix')
    return
  assert all(np.all(np.isfinite(v)) and np.all(v >= 0) and v.sum() > 0 for v in vectors)


@FEW
@given(spec=st.one_of(st.text(max_size=12),
                      st.text(alphabet=st.sampled_from(list('0139,.-e infa')), max_size=12)))
def test_any_guidance_interval_is_parsed_or_refused_by_name(spec):
  try:
    from_config.validate(_with('sample.guidance_logsnr', spec))
    lo, hi = drawing.guidance_interval(spec)
  except ValueError as e:
    assert_named(e, 'sample.guidance_logsnr')
    return
  assert lo < hi and not (np.isnan(lo) or np.isnan(hi))


LABEL_DTYPES = st.sampled_from([np.int32, np.int64, np.uint8, np.float32, np.bool_])


def _small_labels(dtype, shape):
  """Label arrays of `dtype` with values near the valid range (-1 .. a few classes)."""
  dtype = np.dtype(dtype)
  low = 0 if dtype.kind in 'ub' else -3
  elements = st.booleans() if dtype.kind == 'b' else st.integers(low, 6)
  return hnp.arrays(dtype, shape, elements=elements)


def _labels_like(n: int):
  shapes = st.one_of(st.just((n,)), hnp.array_shapes(min_dims=0, max_dims=2, max_side=5))
  return st.tuples(LABEL_DTYPES, shapes).flatmap(lambda a: _small_labels(*a))


SPRITE_SHAPES = st.one_of(
    st.tuples(st.integers(0, 3), st.sampled_from([15, 16]), st.sampled_from([16, 17]),
              st.sampled_from([3, 4])),
    hnp.array_shapes(min_dims=0, max_dims=5, max_side=4))
ARRAY_DTYPES = st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_, np.str_])


@st.composite
def samples_files(draw):
  """The bytes of a file given as eval.samples: an .npz of odd arrays, or random bytes."""
  if draw(st.booleans()):
    return draw(st.binary(max_size=64))
  arrays = {}
  if draw(st.booleans()):
    arrays['images'] = draw(hnp.arrays(draw(ARRAY_DTYPES), draw(SPRITE_SHAPES)))
  n = len(arrays['images']) if arrays.get('images', np.zeros(())).ndim else 1
  if draw(st.booleans()):
    arrays['labels'] = draw(_labels_like(n))
  if draw(st.booleans()):
    arrays['other'] = np.zeros(2)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  data = buffer.getvalue()
  cut = draw(st.integers(0, len(data)))
  return data if draw(st.booleans()) else data[:cut]  # sometimes truncated


@FEW
@given(content=samples_files(), num_classes=st.integers(0, 4))
def test_any_samples_file_is_read_or_refused_by_name(content, num_classes):
  with tempfile.TemporaryDirectory() as folder_:
    path = os.path.join(folder_, 'samples.npz')
    with open(path, 'wb') as f:
      f.write(content)
    try:
      images, labels = evaluate.read_samples(path, np.zeros((1, 16, 16, 3), np.uint8), num_classes)
    except ValueError as e:
      assert_named(e, path)
      return
  assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3) and len(images) > 0
  assert labels.shape == (len(images),) and np.all((labels >= -1) & (labels < num_classes))


@FEW
@given(labels=_labels_like(3), num_classes=st.integers(0, 5))
def test_context_takes_labels_in_range_or_names_them(labels, num_classes):
  try:
    ctx = dataset.context(labels, num_classes)
  except ValueError as e:
    assert_named(e, 'labels')
    return
  assert ctx.shape == (len(labels), max(num_classes, 1))
  assert np.all(ctx.sum(axis=1) == (labels >= 0))


MODES = st.sampled_from(['1', 'L', 'LA', 'P', 'RGB', 'RGBA', 'I;16', 'I', 'F'])
FORMATS = st.sampled_from(['PNG', 'GIF', 'BMP', 'WEBP'])


@st.composite
def image_files(draw):
  """(name, bytes) of a file in a sprite folder: an image of any mode and size, or junk."""
  ext = draw(FORMATS)
  if draw(st.integers(0, 3)) == 0:
    return f'junk.{ext.lower()}', draw(st.binary(max_size=80))
  mode, side = draw(MODES), draw(st.sampled_from([1, 4, 8, 12, 16, 17, 32, 48]))
  width = draw(st.sampled_from([side, side + 1]))
  pixels = draw(hnp.arrays(np.uint8, (side, width, 4)))
  image = Image.fromarray(pixels, 'RGBA').convert(mode if mode not in ('I;16', 'I', 'F') else 'L')
  if mode in ('I;16', 'I', 'F'):
    image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257).convert(mode)
  buffer = io.BytesIO()
  try:
    image.save(buffer, format=ext)
  except (OSError, ValueError, KeyError):  # a mode this format cannot hold
    assume(False)
  return f'sprite.{ext.lower()}', buffer.getvalue()


@FEW
@given(files=st.lists(image_files(), min_size=1, max_size=3), tile=st.sampled_from([0, 0, 4, 16]))
def test_any_sprite_folder_is_read_or_refused_by_name(files, tile):
  with tempfile.TemporaryDirectory() as root:
    for k, (name, content) in enumerate(files):
      with open(os.path.join(root, f'{k}{name}'), 'wb') as f:
        f.write(content)
    try:
      found = folder.sprites(root, 16, tile)
    except ValueError as e:
      assert_named(e, root)
      return
  assert found and all(s.image.dtype == np.uint8 and s.image.shape == (16, 16, 3) for s in found)


@FEW
@given(images=hnp.arrays(ARRAY_DTYPES, SPRITE_SHAPES),
       labels=hnp.arrays(st.sampled_from([np.float32, np.int64, np.uint8]),
                         hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
                         elements=st.integers(0, 1)))
def test_any_course_arrays_are_read_or_refused_by_name(images, labels):
  with tempfile.TemporaryDirectory() as root:
    np.save(os.path.join(root, course.IMAGES), images)
    np.save(os.path.join(root, course.LABELS), labels)
    try:
      out, classes = course.load_arrays(root)
    except ValueError as e:
      assert_named(e, 'Course data', root)
      return
  assert out.dtype == np.uint8 and out.shape[1:] == (16, 16, 3) and len(classes) == len(out)


@pytest.mark.parametrize('spec', ['', ';', 'a', 'a:0.5,b:0.5;c', ' a : 1 '])
def test_well_formed_mixes_parse(spec):
  drawing.parse_mix(spec, ['a', 'b', 'c'])
