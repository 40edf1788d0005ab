"""The refiner (runtime/refiner.py): fine-tuned once after the last step, kept with its settings,
used by the refining pass and named in the files, refused where it cannot serve."""
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from configs import sprites
from experiments import from_config, sample, train
from experiments.runtime import drawing, parallel, refiner, train_step

REFINED = {'train.steps': 2, 'train.refiner_steps': 3, 'sample.refine_draws': 2,
           'sample.gif': False, 'sample.sheet': False}


def _images(workdir: str, name: str) -> np.ndarray:
  return np.load(os.path.join(workdir, 'samples', name + '.npz'))['images']


def test_a_level_range_draws_every_time_inside_it_and_only_there():
  t, correction = train_step._levels(jax.random.key(0), None, {}, 1000, 4096, 0.0, (0.05, 0.14))
  assert float(t.min()) >= 0.05 and float(t.max()) <= 0.14
  assert float(t.max() - t.min()) > 0.08  # spread over the band, not one level
  np.testing.assert_array_equal(correction, 1.0)
  whole, _ = train_step._levels(jax.random.key(0), None, {}, 1000, 4096, 0.0)
  assert float(whole.max()) > 0.9  # without it, every level


def test_the_refiner_is_fine_tuned_once_kept_and_does_the_refining_pass(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir, **REFINED)
  train.run(config, workdir)
  want = from_config.refiner_settings(config.train)
  assert refiner.saved(workdir) == {2: want}
  assert want == {'steps': 3, 'logsnr': [3.0, 5.0], 'norm': 'l1', 'learning_rate': 5e-4}
  by_refiner = _images(workdir, 'step000002_ddim4_r4x2ft3')
  # The same draw with the refining pass by the drawing weights: another file, other sprites.
  plain = tiny_config(data_dir, **{**REFINED, 'sample.refiner': False})
  assert sample.run(plain, workdir).endswith('step000002_ddim4_r4x2')
  assert not np.array_equal(by_refiner, _images(workdir, 'step000002_ddim4_r4x2'))
  # What draws carries the refiner beside the drawing weights, and they differ.
  mesh = parallel.make_mesh()
  kwargs = from_config.state_kwargs(config, 8)
  step, drawn = drawing.weights(workdir, mesh, config.sample, **kwargs)
  assert step == 2 and isinstance(drawn, drawing.Refined)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, drawn.params, drawn.refiner)))
  # Run again, the finished run fine-tunes nothing: the refiner and its sprites stay as they are.
  saved_files = sorted(os.listdir(os.path.join(workdir, 'refiner', '2')))
  before = os.path.getmtime(os.path.join(workdir, 'refiner', '2'))
  train.run(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, 'refiner', '2')) == before
  assert sorted(os.listdir(os.path.join(workdir, 'refiner', '2'))) == saved_files
  np.testing.assert_array_equal(_images(workdir, 'step000002_ddim4_r4x2ft3'), by_refiner)


def test_a_refiner_of_other_settings_is_refused_before_training_and_kept(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  train.run(tiny_config(data_dir, **REFINED), workdir)
  before = refiner.saved(workdir)
  longer = tiny_config(data_dir, **{**REFINED, 'train.refiner_steps': 4})
  with pytest.raises(ValueError, match=r"refiner fine-tuned with .*'steps': 3.*move that folder"):
    train.run(longer, workdir)
  assert refiner.saved(workdir) == before


def test_a_run_stopped_before_its_refiner_fine_tunes_it_when_run_again(tmp_path, data_dir):
  """A workdir trained to its last step without a refiner (stopped while fine-tuning it, or by a
  version without refiners) gets one from the training command, without training further;
  until then the refining pass uses the drawing weights, as the file name says."""
  workdir = str(tmp_path / 'run')
  train.run(tiny_config(data_dir, **{**REFINED, 'train.refiner_steps': 0}), workdir)
  config = tiny_config(data_dir, **REFINED)
  assert sample.run(config, workdir).endswith('step000002_ddim4_r4x2')
  state = train.run(config, workdir)
  assert int(state.step) == 2 and list(refiner.saved(workdir)) == [2]
  assert os.path.exists(os.path.join(workdir, 'samples', 'step000002_ddim4_r4x2ft3.npz'))


def test_refiner_settings_out_of_range_are_refused_by_name(data_dir):
  with pytest.raises(ValueError, match='sample.refine_logsnr=6 lies outside train.refiner_logsnr'):
    from_config.validate(tiny_config(data_dir, **{**REFINED, 'sample.refine_logsnr': 6.0}))
  for bad in ('5,3', '4', 'a,b'):
    with pytest.raises(ValueError, match='train.refiner_logsnr'):
      from_config.validate(tiny_config(data_dir, **{**REFINED, 'train.refiner_logsnr': bad}))
  with pytest.raises(ValueError, match='train.refiner_logsnr=.*must lie strictly inside'):
    from_config.validate(tiny_config(data_dir, **{**REFINED, 'train.refiner_logsnr': '-40,5'}))
  with pytest.raises(ValueError, match='train.refiner_norm'):
    from_config.validate(tiny_config(data_dir, **{**REFINED, 'train.refiner_norm': 'l3'}))
  with pytest.raises(ValueError, match='train.refiner_learning_rate'):
    from_config.validate(tiny_config(data_dir, **{**REFINED, 'train.refiner_learning_rate': 0.0}))
  # Without a refining pass, or with sample.refiner off, the level is the pass's own business.
  for fine in ({'sample.refine_draws': 0}, {'sample.refiner': False}, {'train.refiner_steps': 0}):
    from_config.validate(tiny_config(data_dir, **{**REFINED, 'sample.refine_logsnr': 6.0, **fine}))


def test_a_refiner_asked_to_refine_off_its_levels_is_refused_at_drawing(tmp_path, data_dir):
  """The refiner's own recorded levels decide, whatever the config says now."""
  workdir = str(tmp_path / 'run')
  train.run(tiny_config(data_dir, **REFINED), workdir)
  moved = tiny_config(data_dir, **{**REFINED, 'train.refiner_logsnr': '5,7',
                                   'sample.refine_logsnr': 6.0})
  with pytest.raises(ValueError, match='fine-tuned on logSNR 3..5 only.*sample.refiner=False'):
    sample.run(moved, workdir)


def test_the_cpu_preset_refines_with_a_refiner_and_names_it():
  config = sprites.get_config('cpu')
  assert config.train.refiner_steps == 250 and config.sample.refine_draws == 8
  assert sample.output_name(config, 8400).endswith('_r4x8ft250')
  assert sample.output_name(config, 8400, refiner_steps=0).endswith('_r4x8')
  config.sample.refiner = False
  assert sample.output_name(config, 8400).endswith('_r4x8')
  from_config.validate(sprites.get_config('cpu'))
