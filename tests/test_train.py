"""End to end: a tiny run writes every output; resume equals an uninterrupted run; bad states fail clearly."""
import json
import os

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from conftest import tiny_config
from experiments import from_config, sample, train
from experiments.runtime import checkpoints, parallel, state as state_lib, train_step


def _final_state(config, workdir):
  return state_lib.create_or_restore(mesh=parallel.make_mesh(), mngr=checkpoints.manager(workdir, 5),
                                     must_exist=True, **from_config.state_kwargs(config, 8))


def test_tiny_run_writes_every_output(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir)
  train.run(config, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['n_feat'] == 8
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [1, 2]
  assert all(np.isfinite(json.loads(l)['loss']) for l in lines)
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  assert checkpoints.manager(workdir, 2).latest_step() == 2
  stem = os.path.join(workdir, 'samples', 'step000002_ddim4')
  npz = np.load(stem + '.npz')
  assert npz['images'].dtype == np.uint8 and npz['images'].shape == (8, 16, 16, 3)
  assert list(npz['labels']) == list(range(8)) and len(npz['class_names']) == 8
  png = Image.open(stem + '.png')
  assert png.size == ((1 * 17 + 1) * 4, (8 * 17 + 1) * 4)  # one column, 8 class rows, 4x
  gif = Image.open(stem + '.gif')
  assert gif.n_frames == config.sample.gif_frames + 1


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, data_dir):
  # A constant learning rate, so that the schedule does not depend on train.steps.
  quick = {'sample.gif': False, 'sample.steps': 1, 'train.lr_schedule': 'constant'}
  straight = str(tmp_path / 'straight')
  train.run(tiny_config(data_dir, **{'train.steps': 4}, **quick), straight)
  resumed = str(tmp_path / 'resumed')
  train.run(tiny_config(data_dir, **{'train.steps': 2}, **quick), resumed)
  train.run(tiny_config(data_dir, **{'train.steps': 4}, **quick), resumed)
  lines = open(os.path.join(resumed, 'metrics.jsonl')).read().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [1, 2, 3, 4], 'the second run must not restart'
  a, b = _final_state(tiny_config(data_dir), straight), _final_state(tiny_config(data_dir), resumed)
  assert int(a.step) == int(b.step) == 4
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6),
               (a.params, a.ema_params, a.opt_state), (b.params, b.ema_params, b.opt_state))


def test_max_epochs_ends_the_run_early_and_a_rerun_finds_it_done(tmp_path, data_dir):
  # 0.02 passes over the 1,456 training emoji at batch 16 are 1.8 steps: the run ends at step 2.
  workdir = str(tmp_path / 'run')
  capped = {'train.steps': 1_000, 'train.max_epochs': 0.02, 'train.steps_per_dispatch': 1,
            'sample.gif': False, 'sample.steps': 1}
  config = tiny_config(data_dir, **capped)
  train.run(config, workdir)
  assert checkpoints.manager(workdir, 2).latest_step() == 2
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['steps'] == 2
  assert int(train.run(tiny_config(data_dir, **capped), workdir).step) == 2


def test_a_different_model_in_the_workdir_is_refused_and_kept(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  train.run(tiny_config(data_dir, **{'sample.gif': False, 'sample.steps': 1}), workdir)
  before = sorted(os.walk(os.path.join(workdir, 'checkpoints')))
  with pytest.raises(ValueError, match='trained with model.n_feat=8 .*asks for model.n_feat=16'):
    train.run(tiny_config(data_dir, **{'model.n_feat': 16}), workdir)  # by its config.json
  assert sorted(os.walk(os.path.join(workdir, 'checkpoints'))) == before


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir, **{'train.learning_rate': 1e30, 'train.steps': 6,
                                    'train.lr_schedule': 'constant'})
  with pytest.raises(FloatingPointError, match='diverged') as error:
    train.run(config, workdir)
  last = checkpoints.manager(workdir, 2).latest_step()
  assert last is not None and f'step {last}' in str(error.value)
  kept = _final_state(config, workdir)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(kept.params))


def test_autoguidance_keeps_its_guide_checkpoint_and_draws_from_it(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  guided = {'sample.autoguidance': 0.5, 'sample.guide_step': 1, 'train.steps': 3,
            'train.ckpt_every': 3, 'sample.gif': False}
  train.run(tiny_config(data_dir, **guided), workdir)
  # Step 1 is saved although ckpt_every is 3, and kept although only the latest 2 would be.
  assert checkpoints.manager(workdir, 2).all_steps() == [1, 3]
  samples = lambda name: np.load(os.path.join(workdir, 'samples', name + '.npz'))['images']
  plain = tiny_config(data_dir, **{**guided, 'sample.autoguidance': 0.0})
  sample.run(plain, workdir)
  assert not np.array_equal(samples('step000003_ddim4_ag0.5s1'), samples('step000003_ddim4'))
  # A guide step the workdir lacks falls back to the one its training recorded (a capped run
  # scales it down), and the files name the guide that drew them; with none recorded, the error
  # lists what the workdir holds.
  first = samples('step000003_ddim4_ag0.5s1')
  other = tiny_config(data_dir, **{**guided, 'sample.guide_step': 2})
  assert sample.run(other, workdir).endswith('step000003_ddim4_ag0.5s1')
  np.testing.assert_array_equal(samples('step000003_ddim4_ag0.5s1'), first)
  assert not any('s2' in name for name in os.listdir(os.path.join(workdir, 'samples')))
  recorded = json.load(open(os.path.join(workdir, 'config.json')))
  recorded['sample']['guide_step'] = 0
  json.dump(recorded, open(os.path.join(workdir, 'config.json'), 'w'))
  with pytest.raises(checkpoints.CheckpointError, match='no checkpoint of step 2 .*holds 1, 3'):
    sample.run(other, workdir)


def test_resuming_past_a_guide_step_that_was_never_kept_is_refused_before_training(tmp_path,
                                                                                 data_dir):
  workdir = str(tmp_path / 'run')
  quick = {'sample.gif': False, 'train.lr_schedule': 'constant'}
  train.run(tiny_config(data_dir, **quick, **{'train.steps': 3}), workdir)  # keeps steps 2 and 3
  guided = tiny_config(data_dir, **quick, **{'train.steps': 5, 'sample.autoguidance': 0.5,
                                             'sample.guide_step': 1})
  checkpoints_before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  with pytest.raises(ValueError, match='past sample.guide_step=1, but holds no checkpoint'):
    train.run(guided, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == checkpoints_before


def test_sampling_an_empty_workdir_says_train_first(tmp_path, data_dir):
  with pytest.raises(FileNotFoundError, match='train first'):
    sample.run(tiny_config(data_dir), str(tmp_path / 'empty'))


def test_train_step_on_8_devices_matches_1_device(data_dir):
  """Data parallelism over a mesh changes where the work runs, not the result."""
  assert jax.device_count() == 8
  config = tiny_config(data_dir)
  model = from_config.model(config.model, 8)
  tx = optax.sgd(0.05)  # Adam's m / sqrt(v) would magnify summation-order noise in ~0 gradients
  images = np.random.default_rng(0).integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
  labels = np.arange(50, dtype=np.int32) % 8
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    kwargs = from_config.train_step_kwargs(config, 8, 'cpu')
    kwargs.update(timesteps=500, batch_size=16, cond_drop_rate=0.1, ema_halflife_kimg=1.0,
                  ema_rampup=0.05, steps_per_dispatch=2)
    step = train_step.make(model=model, tx=tx, mesh=mesh, **kwargs)
    state = state_lib.create(model=model, tx=tx, seed=0, image_size=16, num_classes=8, mesh=mesh)
    data = parallel.put_replicated((images, labels), mesh)
    for _ in range(2):
      state, metrics = step(state, *data, jax.random.key(1))
    results.append((jax.device_get(state.params), float(metrics['loss'])))
  (p1, l1), (p8, l8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p1, p8)


def test_the_dispatch_window_waits_for_the_call_depth_back_and_no_other():
  """Training loops keep at most `depth` steps queued (an unbounded queue hangs XLA:CPU's
  all-to-all between host-platform devices): add() waits for exactly the oldest call, once."""

  class Call:
    def __init__(self, name):
      self.name = name

    def block_until_ready(self):
      waited.append(self.name)
      return self

  waited = []
  window = parallel.Window(depth=2)
  for name in 'abcde':
    window.add({'loss': Call(name)})
  assert waited == ['a', 'b', 'c']  # d and e may still run: the host stays two calls ahead


def test_bf16_training_stays_finite_on_the_smoke_preset(data_dir):
  """bf16 compute (float32 parameters) for a few steps of the smoke preset's network (the UNet's
  bf16 forward pass: tests/test_unet.py): finite loss, gradients and float32 state."""
  config = tiny_config(data_dir, **{'model.dtype': 'bfloat16', 'train.learning_rate': 2e-3})
  mesh = parallel.make_mesh()
  kwargs = from_config.state_kwargs(config, 8)
  state = state_lib.create(mesh=mesh, **kwargs)
  step = train_step.make(model=kwargs['model'], tx=kwargs['tx'], mesh=mesh,
                         **from_config.train_step_kwargs(config, 8, 'cpu'))
  images = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
  data = parallel.put_replicated((images, np.arange(64, dtype=np.int32) % 8), mesh)
  for _ in range(3):
    state, metrics = step(state, *data, state_lib.train_key(0))
  assert np.isfinite(float(metrics['loss'])) and np.isfinite(float(metrics['grad_norm']))
  assert all(np.all(np.isfinite(np.asarray(x))) and x.dtype == np.float32
             for x in jax.tree.leaves(state.params))


def test_hflip_mirrors_part_of_the_batch_and_leaves_the_rest_as_without_it():
  mesh = parallel.make_mesh()
  images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
  args = (images, np.zeros(32, np.int32), jax.random.key(3), 64, 8, 0.0, mesh)
  plain, _ = train_step._batch(*args)  # pylint: disable=protected-access
  flipped, _ = train_step._batch(*args, hflip=True)  # pylint: disable=protected-access
  plain, flipped = np.asarray(plain), np.asarray(flipped)
  same = np.all(flipped == plain, axis=(1, 2, 3))
  mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and 10 < mirrored.sum() < 54  # about half of 64


def test_importance_drawn_levels_and_the_l1_norm_train_finite_and_differently(data_dir):
  mesh = parallel.make_mesh()
  images = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
  losses_seen = []
  for importance, norm in ((0.0, 'l2'), (0.9, 'l2'), (0.9, 'l1')):
    config = tiny_config(data_dir, **{'diffusion.loss_weighting': 'min_snr',
                                      'diffusion.importance': importance,
                                      'diffusion.loss_norm': norm})
    kwargs = from_config.state_kwargs(config, 8)
    state = state_lib.create(mesh=mesh, **kwargs)
    step = train_step.make(model=kwargs['model'], tx=kwargs['tx'], mesh=mesh,
                           **from_config.train_step_kwargs(config, 8, 'cpu'))
    data = parallel.put_replicated((images, np.arange(64, dtype=np.int32) % 8), mesh)
    state, metrics = step(state, *data, state_lib.train_key(0))
    losses_seen.append(float(metrics['loss']))
  assert all(np.isfinite(losses_seen)) and len(set(losses_seen)) == 3


@pytest.mark.parametrize('use_ema', [True, False])
def test_drawing_during_training_uses_the_weights_sample_use_ema_names(tmp_path, data_dir,
                                                                       monkeypatch, use_ema):
  """train.sample_every draws with the EMA or the raw weights as sample.use_ema says (its files
  are named _raw for the latter), like the drawing at the end."""
  drawn = {}
  monkeypatch.setattr(sample, 'run', lambda config, workdir, *, params, step, class_names:
                      drawn.setdefault(step, jax.device_get(params)))  # before donation
  config = tiny_config(data_dir, **{'train.steps': 3, 'train.sample_every': 2,
                                    'train.ema_halflife_kimg': 0.01, 'sample.use_ema': use_ema})
  state = train.run(config, str(tmp_path / 'run'))
  restored = checkpoints.restore_step(
      checkpoints.manager(str(tmp_path / 'run'), 5), 2,
      state_lib.abstract_state(mesh=parallel.make_mesh(), **from_config.state_kwargs(config, 8)),
      why='the test', fix='none')
  assert sorted(drawn) == [2, 3]
  for step, expected in ((2, restored), (3, state)):
    want = expected.ema_params if use_ema else expected.params
    other = expected.params if use_ema else expected.ema_params
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, drawn[step], want)))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, drawn[step], other)))
