"""The refiner (runtime/refiner.py): fine-tuned once after the last step, kept with its settings
and the fingerprint of its weights, used by the refining pass and named in the files, refused
where it cannot serve."""
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import tiny_config
from configs import sprites
from diffusion import denoiser, models
from experiments import from_config, sample, train
from experiments.quality import noise_left
from experiments.runtime import checkpoints, drawing, parallel, refiner, train_step

# As the cpu preset draws: autoguided, then refined; a GIF too.
REFINED = {'train.steps': 2, 'train.refiner_steps': 3, 'sample.refine_draws': 2,
           'sample.autoguidance': 0.5, 'sample.guide_step': 1, 'sample.sheet': False}
NAME = 'step000002_ddim4_ag0.5s1_r4x2ft3'


def _images(workdir: str, name: str = NAME) -> np.ndarray:
  return np.load(os.path.join(workdir, 'samples', name + '.npz'))['images']


def _config(data_dir, **overrides):
  return tiny_config(data_dir, **{**REFINED, **overrides})


@pytest.fixture(scope='module')
def refined_run(tmp_path_factory, data_dir):
  """A run trained to its end, with its refiner; tests copy it before changing anything."""
  workdir = str(tmp_path_factory.mktemp('refined') / 'run')
  train.run(_config(data_dir), workdir)
  return workdir


def _copy(workdir: str, tmp_path) -> str:
  return shutil.copytree(workdir, str(tmp_path / 'copy'))


def test_a_level_range_draws_every_time_inside_it_and_only_there():
  t, correction = train_step._levels(jax.random.key(0), None, {}, 1000, 4096, 0.0, (0.05, 0.14))
  assert float(t.min()) >= 0.05 and float(t.max()) <= 0.14
  assert float(t.max() - t.min()) > 0.08  # spread over the band, not one level
  np.testing.assert_array_equal(correction, 1.0)
  whole, _ = train_step._levels(jax.random.key(0), None, {}, 1000, 4096, 0.0)
  assert float(whole.max()) > 0.9  # without it, every level


def test_the_refiner_is_fine_tuned_once_kept_and_does_the_refining_pass(refined_run, data_dir,
                                                                        tmp_path):
  workdir = _copy(refined_run, tmp_path)
  config = _config(data_dir)
  want = from_config.refiner_settings(config.train)
  assert refiner.saved(workdir) == {2: want}
  assert want == {'steps': 3, 'logsnr': [3.0, 5.0], 'norm': 'l1_tv', 'learning_rate': 5e-4}
  by_refiner = _images(workdir)
  assert os.path.exists(os.path.join(workdir, 'samples', NAME + '.gif'))
  # The same draw with the refining pass by the drawing weights: another file, other sprites.
  assert sample.run(_config(data_dir, **{'sample.refiner': False}), workdir).endswith(
      'step000002_ddim4_ag0.5s1_r4x2')
  assert not np.array_equal(by_refiner, _images(workdir, 'step000002_ddim4_ag0.5s1_r4x2'))
  # What draws carries the refiner beside the drawing weights and their guide, and they differ.
  step, drawn = drawing.weights(workdir, parallel.make_mesh(), config.sample,
                                **from_config.state_kwargs(config, 8))
  assert step == 2 and isinstance(drawn, refiner.Refined)
  assert isinstance(drawn.params, drawing.Guided)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, drawn.params.params,
                                              drawn.refiner)))
  # Run again, the finished run fine-tunes nothing: the refiner and its sprites stay as they are.
  saved_files = sorted(os.listdir(os.path.join(workdir, 'refiner', '2')))
  before = os.path.getmtime(os.path.join(workdir, 'refiner', '2'))
  train.run(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, 'refiner', '2')) == before
  assert sorted(os.listdir(os.path.join(workdir, 'refiner', '2'))) == saved_files
  np.testing.assert_array_equal(_images(workdir), by_refiner)


def test_noise_left_measures_the_refiner_when_asked_and_names_a_missing_one(refined_run, data_dir):
  """--refiner: x0_hat by the run's refiner (the refining pass's network, unguided), not by the
  drawing weights; a config whose pass uses no refiner is refused, naming the flag."""
  config, labels = _config(data_dir), np.arange(4) % 8
  x_t = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  t, logsnr = np.full(4, 0.1, np.float32), np.full(4, 4.0, np.float32)
  x0_hat = lambda **kw: np.asarray(
      noise_left.make_denoise(config, refined_run, 8, labels, False, **kw)[1](x_t, t, logsnr)[0])
  _, drawn = drawing.weights(refined_run, parallel.make_mesh(), config.sample,
                             **from_config.state_kwargs(config, 8))
  s = from_config.sampling(config)
  by_hand = denoiser.make_denoiser(
      model_fn=models.network_fn(from_config.model(config.model, 8), drawn.refiner),
      context=jax.nn.one_hot(labels, 8), prediction=s.prediction, sigma_data=s.sigma_data,
      threshold=s.threshold)(x_t, t, logsnr)[0]
  np.testing.assert_allclose(x0_hat(use_refiner=True), by_hand, atol=1e-5)
  assert not np.allclose(x0_hat(use_refiner=True), x0_hat(), atol=1e-3)
  without = _config(data_dir, **{'sample.refiner': False})
  with pytest.raises(ValueError, match='--refiner: .* no refiner of step 2'):
    noise_left.make_denoise(without, refined_run, 8, labels, False, use_refiner=True)


def test_draws_during_training_refine_with_the_drawing_weights_and_say_so(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  train.run(tiny_config(data_dir, **{'train.steps': 3, 'train.sample_every': 2,
                                     'train.refiner_steps': 3, 'sample.refine_draws': 2,
                                     'sample.gif': False, 'sample.sheet': False}), workdir)
  assert sorted(n for n in os.listdir(os.path.join(workdir, 'samples')) if n.endswith('.npz')) == [
      'step000002_ddim4_r4x2.npz', 'step000003_ddim4_r4x2ft3.npz']


def test_a_refiner_of_other_settings_is_refused_and_kept(refined_run, data_dir, tmp_path):
  workdir = _copy(refined_run, tmp_path)
  before = refiner.saved(workdir)
  with pytest.raises(ValueError, match=r"refiner fine-tuned with .*'steps': 3.*move that folder"):
    train.run(_config(data_dir, **{'train.refiner_steps': 4}), workdir)
  assert refiner.saved(workdir) == before


def test_a_run_stopped_before_its_refiner_fine_tunes_it_when_run_again(refined_run, data_dir,
                                                                      tmp_path):
  """A workdir trained to its last step without a refiner (stopped while fine-tuning it, or by a
  version without refiners) gets the same one from the training command, without training
  further, or from finish_refiner (what a sweep calls before evaluating a finished run); until
  then the refining pass uses the drawing weights, as the file name says."""
  workdir = _copy(refined_run, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'refiner'))
  other = shutil.copytree(workdir, str(tmp_path / 'other'))
  config = _config(data_dir)
  assert sample.run(config, workdir).endswith('step000002_ddim4_ag0.5s1_r4x2')
  state = train.run(config, workdir)
  assert int(state.step) == 2 and refiner.saved(workdir) == refiner.saved(refined_run)
  np.testing.assert_array_equal(_images(workdir), _images(refined_run))
  train.finish_refiner(config, other)
  assert refiner.saved(other) == refiner.saved(refined_run)
  assert sample.run(config, other).endswith(NAME)
  np.testing.assert_array_equal(_images(other), _images(refined_run))


def test_a_refiner_of_other_weights_is_refused_and_kept(refined_run, data_dir, tmp_path):
  """Trained again from scratch into the same workdir (its checkpoints moved away), the run's
  final step has other weights: the old refiner is not used for them, nor overwritten."""
  workdir = _copy(refined_run, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  before = sorted(os.listdir(os.path.join(workdir, 'refiner', '2')))
  other_seed = _config(data_dir)
  other_seed.seed = 1
  with pytest.raises(ValueError, match='fine-tuned from other weights.*move it away'):
    train.run(other_seed, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'refiner', '2'))) == before
  with pytest.raises(ValueError, match='fine-tuned from other weights'):
    sample.run(other_seed, workdir)
  assert sample.run(_config(data_dir, **{'sample.refiner': False}), workdir).endswith('r4x2')


def test_a_refiner_without_its_record_is_named_not_silently_skipped(refined_run, data_dir,
                                                                   monkeypatch):
  monkeypatch.setattr(checkpoints, 'custom_metadata', lambda mngr, step: {})
  with pytest.raises(checkpoints.CheckpointError, match='no readable record.*move it away'):
    sample.run(_config(data_dir), refined_run)


def test_a_refiner_asked_to_refine_off_its_levels_is_refused_at_drawing(refined_run, data_dir):
  """The refiner's own recorded levels decide, whatever the config says now."""
  moved = _config(data_dir, **{'train.refiner_logsnr': '5,7', 'sample.refine_logsnr': 6.0})
  with pytest.raises(ValueError, match='fine-tuned on logSNR 3..5 only.*sample.refiner=False'):
    sample.run(moved, refined_run)


def test_refiner_settings_out_of_range_are_refused_by_name(data_dir):
  with pytest.raises(ValueError, match='sample.refine_logsnr=6 lies outside train.refiner_logsnr'):
    from_config.validate(_config(data_dir, **{'sample.refine_logsnr': 6.0}))
  for bad in ('5,3', '4', 'a,b'):
    with pytest.raises(ValueError, match='train.refiner_logsnr'):
      from_config.validate(_config(data_dir, **{'train.refiner_logsnr': bad}))
  with pytest.raises(ValueError, match='train.refiner_logsnr'):  # even with no refiner to train
    from_config.validate(_config(data_dir, **{'train.refiner_logsnr': '5,3',
                                              'train.refiner_steps': 0}))
  with pytest.raises(ValueError, match='train.refiner_logsnr=.*must lie strictly inside'):
    from_config.validate(_config(data_dir, **{'train.refiner_logsnr': '-40,5'}))
  with pytest.raises(ValueError, match='train.refiner_norm'):
    from_config.validate(_config(data_dir, **{'train.refiner_norm': 'l3'}))
  with pytest.raises(ValueError, match='train.refiner_learning_rate'):
    from_config.validate(_config(data_dir, **{'train.refiner_learning_rate': 0.0}))
  # Without a refining pass, or with sample.refiner off, the level is the pass's own business.
  for fine in ({'sample.refine_draws': 0}, {'sample.refiner': False}, {'train.refiner_steps': 0}):
    from_config.validate(_config(data_dir, **{'sample.refine_logsnr': 6.0, **fine}))


def test_the_cpu_preset_refines_with_a_refiner_and_names_it():
  config = sprites.get_config('cpu')
  assert config.train.refiner_steps == 250 and config.sample.refine_draws == 8
  assert sample.output_name(config, 8400).endswith('_r4x8ft250')
  assert sample.output_name(config, 8400, refiner_steps=0).endswith('_r4x8')
  config.sample.refiner = False
  assert sample.output_name(config, 8400).endswith('_r4x8')
  from_config.validate(sprites.get_config('cpu'))
