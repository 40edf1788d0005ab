"""Configs: presets, overrides at flag parsing, and early checks of values."""
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import sprites
from experiments import from_config, sample
from experiments.runtime import drawing

CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs', 'sprites.py')


def _parse(*args):
  values = flags.FlagValues()
  argv = ['prog', *args]
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_preset_and_override():
  config = _parse(f'--config={CONFIG}:smoke', '--config.train.steps=7', '--config.sample.sampler=heun')
  assert config.preset == 'smoke' and config.train.steps == 7 and config.sample.sampler == 'heun'


def test_unknown_key_fails_at_parsing_with_its_name():
  with pytest.raises(Exception, match="trian"):
    _parse(f'--config={CONFIG}:smoke', '--config.trian.steps=7')


def test_wrong_type_fails_at_parsing():
  with pytest.raises(Exception, match='steps'):
    _parse(f'--config={CONFIG}:smoke', '--config.train.steps=many')


@pytest.mark.parametrize('preset', sprites.PRESETS)
def test_every_preset_validates(preset):
  from_config.validate(sprites.get_config(preset))


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match='smoke, cpu, course, default'):
    sprites.get_config('fast')


@pytest.mark.parametrize('key, value, message', [
    ('diffusion.schedule', 'cosinus', 'Unknown diffusion.schedule'),
    ('sample.sampler', 'plms', 'Unknown sample.sampler'),
    ('diffusion.prediction', 'score', 'Unknown diffusion.prediction'),
    ('diffusion.loss_weighting', 'p2', 'Unknown diffusion.loss_weighting'),
    ('diffusion.loss_norm', 'huber', 'Unknown diffusion.loss_norm'),
    ('train.steps_per_dispatch', 7, 'multiple of train.steps_per_dispatch'),
    ('train.steps_per_dispatch', -1, 'multiple of train.steps_per_dispatch'),
    ('data.image_size', 18, 'multiple of 4'),
    ('sample.guidance_logsnr', '3,-3', 'sample.guidance_logsnr'),
    ('train.adam_beta2', 1.0, 'train.adam_beta2'),
    ('model.patch', 2, 'model.patch=2 needs model.name=unet'),  # smoke: the ContextUnet
    ('model.patch', 0, 'model.patch=0: must be >= 1'),
    ('sample.autoguidance', 0.5, 'sample.autoguidance=0.5 needs sample.guide_step >= 1'),
    ('sample.autoguidance', -1.0, 'sample.autoguidance=-1'),
    ('sample.refine_draws', -1, 'sample.refine_draws=-1'),
])
def test_bad_values_fail_before_anything_runs(key, value, message):
  config = sprites.get_config('smoke')
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    from_config.validate(config)


def test_unet_patches_must_tile_the_sprite_and_its_levels():
  config = sprites.get_config('cpu')  # 3 levels: 16 px halves twice
  config.model.patch = 2
  from_config.validate(config)  # 16 = 2 * 2 ** 2
  config.model.patch = 8
  with pytest.raises(ValueError, match='model.patch=8 pixel patches.*divisible by 32'):
    from_config.validate(config)


def test_the_magnitude_preserving_unet_takes_the_unets_keys_and_checks():
  config = sprites.get_config('cpu')
  config.model.update(name='unet_mp', patch=2, self_cond=True)
  from_config.validate(config)
  assert type(from_config.model(config.model, 8)).__name__ == 'MPUNet'
  config.model.patch = 8  # 16 px in patches of 8 cannot halve twice more
  with pytest.raises(ValueError, match='model.patch=8 pixel patches'):
    from_config.validate(config)


def test_zero_terminal_snr_with_eps_prediction_is_refused():
  config = sprites.get_config('smoke')
  config.diffusion.zero_terminal_snr = True
  with pytest.raises(ValueError, match='prediction=v'):
    from_config.validate(config)
  config.diffusion.prediction = 'v'
  from_config.validate(config)


def test_classifier_free_guidance_without_a_trained_null_context_is_refused():
  config = sprites.get_config('cpu')  # guidance 2
  config.diffusion.cond_drop_rate = 0.0
  with pytest.raises(ValueError, match='sample.guidance=2 steers away from the null context, which '
                     'diffusion.cond_drop_rate=0 never trains'):
    from_config.validate(config)
  config.sample.guidance = 0.0  # autoguidance alone needs no null context
  from_config.validate(config)


@pytest.mark.parametrize('steps, asked, backend, expected', [
    (28_600, 0, 'gpu', 10),  # automatic: fused on accelerators
    (3_500, 0, 'cpu', 1),    # ... never on CPU, where scanned conv gradients are slow
    (21, 0, 'tpu', 7),       # the largest divisor of train.steps up to 10
    (13, 0, 'gpu', 1),
    (40, 4, 'cpu', 4),       # an explicit value is kept
])
def test_steps_per_dispatch_resolves_automatic(steps, asked, backend, expected):
  config = sprites.get_config('smoke')
  config.train.update(steps=steps, steps_per_dispatch=asked)
  from_config.validate(config)
  assert from_config.steps_per_dispatch(config.train, backend) == expected


@pytest.mark.parametrize('max_epochs, size, per_dispatch, expected', [
    (0.0, 2_000, 0, 50_000),       # no cap
    (300.0, 1_878, 0, 1_110),      # DawnLike: 1,100.4 steps of 512, up to whole dispatches of 10
    (300.0, 1_456, 4, 856),        # emoji, an explicit dispatch size: 853.1 up to a multiple of 4
    (300.0, 89_400, 0, 50_000),    # the course's set: train.steps comes first
    (1e-6, 10, 0, 10),             # at least one dispatch
])
def test_max_epochs_caps_steps_by_the_size_of_the_training_split(max_epochs, size, per_dispatch,
                                                                 expected):
  config = sprites.get_config('smoke')
  config.train.update(steps=50_000, batch_size=512, max_epochs=max_epochs,
                      steps_per_dispatch=per_dispatch)
  assert from_config.capped_steps(config.train, size) == expected
  from_config.cap_steps(config, size)
  assert config.train.steps == expected
  from_config.validate(config)  # still a multiple of the dispatch size


def test_negative_max_epochs_is_refused_by_name():
  config = sprites.get_config('smoke')
  config.train.max_epochs = -1.0
  with pytest.raises(ValueError, match='train.max_epochs'):
    from_config.validate(config)


@pytest.mark.parametrize('preset, num_classes, count', [
    ('smoke', 8, 94_691),         # ContextUnet, 16 channels
    ('cpu', 8, 1_005_107),        # UNet 16/32/80, attention at 4x4 (the main job's log says it)
    ('course', 5, 1_481_027),     # ContextUnet 64, as the PyTorch peer (../shared/bench)
    ('accelerator', 8, 28_328_195),  # UNet 128/256/256, two blocks, attention at 8x8, 4x4
    ('tpu', 8, 28_328_195),       # the accelerator's network
])
def test_parameter_count_per_preset(preset, num_classes, count):
  config = sprites.get_config(preset)
  model = from_config.model(config.model, num_classes)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)),
      jnp.zeros((1, num_classes))))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == count


def test_guidance_interval_spec_is_parsed_or_refused_by_name():
  assert drawing.guidance_interval('') == (-float('inf'), float('inf'))
  assert drawing.guidance_interval(' -3, 2.5') == (-3.0, 2.5)
  for bad in ('3', '2,1', 'a,b', '-inf,1', '1,2,3'):
    with pytest.raises(ValueError, match='sample.guidance_logsnr'):
      drawing.guidance_interval(bad)
  assert drawing.output_name(7, 'dpmpp_2m', 25, 2.0, 0, '-2,3') == 'step000007_dpmpp_2m25_g2i-2to3'
  assert drawing.output_name(7, 'dpmpp_2m', 25, 0.0, 0, '-2,3') == 'step000007_dpmpp_2m25'
  assert drawing.output_name(7, 'ddim', 9, 0.0, 2, '', use_ema=False) == 'step000007_ddim9_p2_raw'
  assert drawing.output_name(7, 'ddim', 9, 0.0, logsnr_end=4.0) == 'step000007_ddim9e4'
  assert drawing.output_name(7, 'ddim', 9, 0.0, logsnr_grid='-8,8') == 'step000007_ddim9u-8to8'
  assert drawing.output_name(7, 'ddim', 9, 0.0, logsnr_end=4.0, logsnr_start=-8.0) == \
      'step000007_ddim9from-8e4'
  assert (drawing.output_name(7, 'dpmpp_2m', 25, 1.0, 32, '-2,3', autoguidance=0.5, guide_step=400)
          == 'step000007_dpmpp_2m25_g1i-2to3_ag0.5s400_p32')


def test_every_setting_that_changes_the_draws_changes_the_file_name():
  """Two draws of one model never share a file (a sweep reads its numbers back by this name)."""
  config = sprites.get_config('cpu')
  preset = sample.output_name(config, 8400)
  assert preset == 'step008400_dpmpp_2m25from-8_g2i-2to3_ag0.5s400_r4x8ft250'  # the README's
  names = {preset}
  for key, value in [('eta', 0.5), ('clip_x0', 'none'), ('clip_x0', 'dynamic'), ('seed', 1),
                     ('refine_draws', 16), ('refine_draws', 0), ('refine_logsnr', 5.0),
                     ('refiner', False), ('logsnr_start', -6.0), ('logsnr_start', 0.0)]:
    changed = config.copy_and_resolve_references()
    changed.sample[key] = value
    if key == 'eta':
      changed.sample.sampler = 'ddim'
      names.add(sample.output_name(changed, 8400).replace('_eta0.5', ''))  # ddim at eta 0
    names.add(sample.output_name(changed, 8400))
  changed.sample.update(clip_x0='dynamic', dynamic_percentile=0.99)
  names.add(sample.output_name(changed, 8400))
  assert len(names) == 13, names


def test_logsnr_grid_is_checked_against_the_schedule_and_logsnr_end():
  config = sprites.get_config('cpu')  # cosine: logSNR -20 at t = 1
  config.sample.update(logsnr_grid='-8,8', logsnr_start=0.0)  # the preset's -8 is not below -8
  from_config.validate(config)
  assert from_config.sampling(config).logsnr_grid == (-8.0, 8.0)
  for bad, match in (('8,-8', 'lo < hi'), ('-30,8', 'strictly inside'), ('x', 'lo,hi')):
    config.sample.logsnr_grid = bad
    with pytest.raises(ValueError, match='sample.logsnr_grid.*' + match):
      from_config.validate(config)
  config.sample.update(logsnr_grid='-19.99999,-19.9999', steps=20)  # steps on the same t
  with pytest.raises(ValueError, match='sample.logsnr_grid.*same time'):
    from_config.validate(config)
  config.sample.update(logsnr_grid='-8,8', steps=2)
  with pytest.raises(ValueError, match='sample.steps >= 3'):
    from_config.validate(config)
  config.sample.update(steps=20, logsnr_end=4.0)
  with pytest.raises(ValueError, match='set one of them'):
    from_config.validate(config)


def test_logsnr_start_is_checked_against_the_schedule_and_the_grid():
  config = sprites.get_config('cpu')  # cosine: logSNR -20 at t = 1
  config.sample.update(logsnr_start=-8.0, logsnr_end=4.0)
  from_config.validate(config)
  assert from_config.sampling(config).logsnr_start == -8.0
  assert from_config.sampling(sprites.get_config('cpu')).logsnr_start == -8.0  # the preset's
  assert from_config.sampling(sprites.get_config('smoke')).logsnr_start == -float('inf')
  config.sample.logsnr_start = -30.0  # noisier than t = 1: the sampler starts at t = 1
  from_config.validate(config)
  config.sample.logsnr_start = -6.0  # on the linear schedule: -5.05 at t = 1
  config.diffusion.update(schedule='linear', timesteps=500)
  from_config.validate(config)
  for bad, match in ((dict(logsnr_start=-8.0, logsnr_grid='-10,8'), 'below'),
                     (dict(logsnr_start=-6.0, logsnr_grid='-6,8'), 'below'),
                     (dict(logsnr_start=0.5), 'must be')):
    config = sprites.get_config('cpu')
    config.sample.update(bad)
    with pytest.raises(ValueError, match='sample.logsnr_start.*' + match):
      from_config.validate(config)


def test_the_refining_level_is_checked_against_the_schedule():
  config = sprites.get_config('cpu')  # cosine: logSNR -20 at t = 1, +inf at t = 0
  assert (from_config.sampling(config).refine_draws, from_config.sampling(config).refine_logsnr) \
      == (8, 4.0)
  config.sample.refine_logsnr = 30.0
  with pytest.raises(ValueError, match=r'sample.refine_logsnr=30.0: must be in \[-20, 20\]'):
    from_config.validate(config)
  config.diffusion.update(schedule='linear', timesteps=500)  # logSNR -10.1 at t = 1
  config.sample.refine_logsnr = -15.0
  with pytest.raises(ValueError, match='sample.refine_logsnr=-15: the linear schedule'):
    from_config.validate(config)
  config.sample.refine_draws = 0  # off: the level is not used, so not checked
  from_config.validate(config)


@pytest.mark.parametrize('weight_decay', [0.0, 0.1])
def test_adam_beta2_sets_the_second_moment_decay(weight_decay):
  """After one update from zero, Adam's second moment is (1 - beta2) g^2, with or without decay."""
  config = sprites.get_config('smoke')
  config.train.update(adam_beta2=0.9, weight_decay=weight_decay)
  params = {'w': jnp.ones((3,))}
  grads = {'w': jnp.asarray([1.0, -2.0, 3.0])}
  tx = from_config.optimizer(config.train)
  _, state = tx.update(grads, tx.init(params), params)
  nu = [s.nu for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, 'nu')) if hasattr(s, 'nu')]
  assert len(nu) == 1
  assert jnp.allclose(nu[0]['w'], 0.1 * grads['w'] ** 2)


@pytest.mark.parametrize('overrides, message', [
    ({'sample.guide_step': 8400}, 'sample.guide_step=8400 must be a step this run saves'),
    ({'sample.guide_step': 405, 'train.steps_per_dispatch': 10},
     'sample.guide_step=405 must be a step this run saves.*multiple of the 10 step'),
    ({'train.eval_every': 200}, 'train.eval_every=200 draws with autoguidance before its guide'),
])
def test_the_guide_step_must_be_one_the_run_saves_before_drawing_with_it(overrides, message):
  config = sprites.get_config('cpu')
  assert from_config.guide_steps(config, 'cpu') == (400,)
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  with pytest.raises(ValueError, match=message):
    from_config.guide_steps(config, 'cpu')


def test_a_capped_run_scales_its_guide_step_with_it():
  config = sprites.get_config('cpu')
  from_config.cap_steps(config, 200)  # 250 passes over 200 sprites at batch 32: 1,570 steps
  assert config.train.steps == 1_570
  assert config.sample.guide_step == 70  # 400 / 8,400 of the run, in whole dispatches of 10
  assert from_config.guide_steps(config, 'cpu') == (70,)  # and the run saves it
  tiny = sprites.get_config('cpu')
  from_config.cap_steps(tiny, 4)
  assert (tiny.train.steps, tiny.sample.guide_step) == (40, 10)  # at least one dispatch
  assert from_config.guide_steps(tiny, 'cpu') == (10,)
