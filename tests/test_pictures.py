"""Pictures: the forward strip's statistics, alpha keying, palettes, atlases, and every file written."""
import dataclasses
import json
import logging
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import tiny_config
from configs import sprites
from diffusion import samplers, schedules
from experiments import from_config, show, train
from experiments.data import dataset
from experiments.pictures import denoising, forward_process, sprite_sheet
from experiments.runtime import drawing, parallel

WHITE, INK = (255, 255, 255), (20, 20, 20)


def _ringed_sprite() -> np.ndarray:
  """10x10 white, with a dark ring (rows/cols 2..7) around a white 2x2 inside."""
  image = np.full((10, 10, 3), 255, np.uint8)
  image[2:8, 2:8] = INK
  image[4:6, 4:6] = WHITE
  return image


def test_flood_fill_keys_the_border_background_and_keeps_inner_white():
  sprite = _ringed_sprite()
  sprite[0, 0] = (250, 252, 245)  # off-white background still counts as background
  alpha = sprite_sheet.to_rgba(sprite[None], tolerance=24)[0, ..., 3]
  assert np.all(alpha[4:6, 4:6] == 255), 'white enclosed by the sprite must stay opaque'
  assert np.all(alpha[2:8, 2:8] == 255)
  ring_free = np.ones((10, 10), bool)
  ring_free[2:8, 2:8] = False
  assert np.all(alpha[ring_free] == 0), 'the border-connected background must be transparent'


def test_a_gap_in_the_outline_lets_the_background_in():
  sprite = _ringed_sprite()
  sprite[2:4, 4] = WHITE  # a channel from the border to the inside
  alpha = sprite_sheet.to_rgba(sprite[None])[0, ..., 3]
  assert np.all(alpha[4:6, 4:6] == 0)


def test_palette_reduction_leaves_at_most_k_colours():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 200, (6, 16, 16, 3), dtype=np.uint8)
  images[:, :2] = 255  # a background band to key out
  rgba = sprite_sheet.to_rgba(images)
  for k in (1, 4, 16):
    reduced = sprite_sheet.reduce_palette(rgba, k)
    opaque = reduced[..., 3] > 0
    assert len(np.unique(reduced[opaque][:, :3], axis=0)) <= k
    np.testing.assert_array_equal(reduced[..., 3], rgba[..., 3])
  few = sprite_sheet.to_rgba(np.stack([_ringed_sprite()] * 2))
  np.testing.assert_array_equal(sprite_sheet.reduce_palette(few, 8), few)  # 2 colors already: kept


def test_sheet_atlas_matches_the_sheet(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 200, (5, 16, 16, 3), dtype=np.uint8)
  names, classes = [f's{i}' for i in range(5)], ['a', 'a', 'b', 'b', 'c']
  png = sprite_sheet.write_sheet(str(tmp_path / 'x'), images, names, classes, columns=2, colors=6,
                           factor=3)
  sheet = np.asarray(Image.open(png))
  atlas = json.load(open(str(tmp_path / 'x_sheet.json')))
  assert sheet.shape == (atlas['height'], atlas['width'], 4) == (3 + 3 * 51, 3 + 2 * 51, 4)
  assert atlas['image'] == os.path.basename(png)
  assert [(s['name'], s['class']) for s in atlas['sprites']] == list(zip(names, classes))
  covered = np.zeros(sheet.shape[:2], int)
  for sprite, entry in zip(images, atlas['sprites']):
    x, y, w, h = (entry[k] for k in 'xywh')
    assert (w, h) == (48, 48) and x + w <= sheet.shape[1] and y + h <= sheet.shape[0]
    covered[y:y + h, x:x + w] += 1
    cut = sheet[y:y + h, x:x + w]
    assert np.all(cut[..., 3] == 255)  # no white in these sprites: every pixel opaque
    assert np.abs(cut[::3, ::3, :3].astype(int) - sprite).mean() < 40  # the sprite, in 6 colors
  assert covered.max() == 1 and np.all(sheet[covered == 0, 3] == 0)  # no overlap; gaps transparent


def _diffusion(**overrides):
  d = sprites.get_config('course').diffusion
  d.update(overrides)
  return d


def test_forward_strip_at_t1_is_standard_normal_with_zero_terminal_snr():
  d = _diffusion(schedule='cosine', zero_terminal_snr=True, prediction='v')
  logsnr_fn = from_config.logsnr_fn(d)
  times = forward_process.times_at(logsnr_fn, forward_process.STRIP_LOGSNR)
  assert times[0] == 0.0 and times[-1] == 1.0 and np.all(np.diff(times) > 0)
  logsnr = np.asarray(logsnr_fn(times.astype(np.float32)))
  assert np.all(np.diff(logsnr) < 0) and logsnr[-1] == -np.inf
  x0 = np.random.default_rng(2).uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
  x_t = forward_process.noisy(x0, logsnr, seed=0)
  np.testing.assert_allclose(x_t[0], x0, atol=1e-6)  # t = 0 is the sprite itself
  last = x_t[-1].ravel()
  assert abs(last.mean()) < 0.02 and abs(last.std() - 1) < 0.02
  assert stats.kstest(last, 'norm').pvalue > 0.01
  assert abs(np.corrcoef(last, x0.ravel())[0, 1]) < 0.02  # nothing of the sprite is left
  assert 'pure N(0, I)' in forward_process.terminal_note(logsnr[-1])


def test_linear_schedule_says_honestly_that_t1_is_not_pure_noise():
  logsnr_fn = from_config.logsnr_fn(_diffusion())  # the course: linear betas, T = 500
  end = float(logsnr_fn(np.float32(1.0)))
  alpha = np.sqrt(1 / (1 + np.exp(-end)))
  assert 0.07 < alpha < 0.09  # alpha_bar_T ~ 0.0063
  note = forward_process.terminal_note(end)
  assert 'not pure noise' in note
  assert float(re.search(r'x_1 = ([0-9.e-]+) x_0', note).group(1)) == pytest.approx(alpha, rel=1e-2)
  x0 = np.random.default_rng(3).uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
  x1 = forward_process.noisy(x0, np.array([end]), seed=0)[0]
  slope = np.polyfit(x0.ravel(), x1.ravel(), 1)[0]  # the sprite is measurably still in x_1
  assert abs(slope - alpha) < 0.02


@pytest.mark.parametrize('name', sorted(schedules.SCHEDULES))
def test_every_schedule_strip_runs_from_the_sprite_to_no_idea(name):
  logsnr_fn = from_config.logsnr_fn(_diffusion(schedule=name))
  times = forward_process.times_at(logsnr_fn, forward_process.STRIP_LOGSNR)
  words = [forward_process.band(l) for l in np.asarray(logsnr_fn(times.astype(np.float32)))]
  assert times[0] == 0.0 and times[-1] == 1.0
  assert words[0] == 'clearly the sprite' and words[-1] == 'no idea'
  assert set(words) == {word for _, word in forward_process.BANDS}


def _picture_config(data_dir):
  return tiny_config(data_dir, **{
      'show.sprites': 3, 'show.forward_frames': 5, 'show.mix_rows': 2, 'show.mix_steps': 3,
      'show.guidance_scales': '0,2', 'show.class_b': 'symbols',
      'sample.sheet_colors': 4, 'sample.sheet_upscale': 2})


def test_show_without_a_checkpoint_writes_the_forward_process(tmp_path, data_dir):
  paths = show.run(_picture_config(data_dir), str(tmp_path / 'fresh'))
  assert [os.path.basename(p) for p in paths] == ['forward.png', 'forward.gif']
  strip = Image.open(paths[0])
  assert strip.width >= len(forward_process.STRIP_LOGSNR) * 16 * 4 and strip.height >= 3 * 16 * 4
  gif = Image.open(paths[1])
  assert gif.n_frames == 5 and gif.width >= 3 * 16 * 6


def test_show_of_a_one_class_run_writes_the_forward_process_and_says_why_no_more(tmp_path,
                                                                                 data_dir, caplog):
  workdir = tmp_path / 'cats'
  os.makedirs(workdir / 'checkpoints')
  (workdir / 'data.json').write_text(json.dumps({'class_names': ['cats']}))
  with caplog.at_level(logging.INFO):
    paths = show.run(_picture_config(data_dir), str(workdir))
  assert [os.path.basename(p) for p in paths] == ['forward.png', 'forward.gif']
  assert any('one class (cats): the context pictures need two classes' in r.getMessage()
             for r in caplog.records)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  """(config, workdir) of a 2-step run; training ends by writing --mode=sample's outputs."""
  workdir = str(tmp_path_factory.mktemp('pictures') / 'run')
  config = _picture_config(data_dir)
  train.run(config, workdir)
  return config, workdir


def test_sample_writes_a_sprite_sheet_and_atlas(trained):
  config, workdir = trained
  stem = os.path.join(workdir, 'samples', 'step000002_ddim4')
  assert Image.open(stem + '.gif').n_frames == config.sample.gif_frames + 1
  sheet = np.asarray(Image.open(stem + '_sheet.png'))
  assert sheet.shape == (2 + 8 * 34, 2 + 1 * 34, 4)  # 8 classes x 1 sprite, 2x, 1-pixel gaps
  assert len(np.unique(sheet[sheet[..., 3] > 0][:, :3], axis=0)) <= 4
  atlas = json.load(open(stem + '_sheet.json'))
  assert len(atlas['sprites']) == 8 and atlas['sprites'][-1]['class'] == 'symbols'
  assert atlas['sprites'][-1]['name'] == 'symbols_00'


def test_show_writes_every_picture(trained):
  config, workdir = trained
  paths = {os.path.basename(p): p for p in show.run(config, workdir)}
  assert sorted(paths) == ['classes.png', 'forward.gif', 'forward.png', 'guidance.png', 'mix.png']
  for name, rows, cols in (('classes', 8, 1), ('mix', 2, 3), ('guidance', 8, 2)):
    picture = Image.open(paths[name + '.png'])
    assert picture.width >= cols * 64 and picture.height >= rows * 64, name


def test_show_refuses_another_target_than_the_one_that_trained_the_workdir(trained):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.diffusion.prediction = 'x0'
  with pytest.raises(ValueError, match='trained with diffusion.prediction=eps'):
    show.run(other, workdir)


def test_repeated_indices_share_the_noise_and_only_the_context_changes(trained):
  config, workdir = trained
  mesh = parallel.make_mesh()
  _, params = drawing.restore_params(workdir, mesh, True, **from_config.state_kwargs(config, 8))
  draw = show._drawer(config, mesh, params, 8)  # pylint: disable=protected-access
  ctx = np.eye(8, dtype=np.float32)[[0, 0, 0, 7]]
  images = draw(ctx, indices=np.array([5, 5, 6, 5]))
  np.testing.assert_array_equal(images[0], images[1])
  assert np.any(images[0] != images[2]) and np.any(images[0] != images[3])
  np.testing.assert_array_equal(images[0], draw(ctx[:1], indices=np.array([5]))[0])


def test_the_last_sampling_call_draws_only_the_rows_left():
  """70 rows in calls of 32 on 8 devices: 32, 32 and 8 (2 rows of padding, not 26), every row's
  sprite back in its place."""
  mesh, calls = parallel.make_mesh(), []

  def fn(params, keys, context):  # a stand-in sampler: each sprite is its row's context value
    del params, keys
    calls.append(len(context))
    return jnp.broadcast_to(context[:, :1, None, None], (len(context), 2, 2, 3))

  context = np.linspace(-1, 1, 70, dtype=np.float32)[:, None]
  images, movie = drawing.generate(fn, None, 0, context, 32, mesh, 0)
  assert calls == [32, 32, 8] and movie is None
  np.testing.assert_array_equal(images[:, 0, 0, 0], dataset.to_uint8(context[:, 0]))
  assert drawing.generate(fn, None, 0, context[:5], 256, mesh, 0)[0].shape == (5, 2, 2, 3)
  assert calls[-1] == 8  # a small draw: one call, rounded up to the devices


def test_refining_changes_the_sprites_but_not_the_sampler_s_movie(trained):
  """sample.refine_draws is a pass after the sampler: the recorded steps stay as they were."""
  config, workdir = trained
  mesh = parallel.make_mesh()
  _, params = drawing.restore_params(workdir, mesh, True, **from_config.state_kwargs(config, 8))
  model, plain = from_config.model(config.model, 8), from_config.sampling(config)
  context = np.eye(8, dtype=np.float32)[:4]
  draw = lambda sampling: drawing.generate(drawing.make_sample_fn(model, sampling, mesh, 3),
                                           params, 0, context, 4, mesh, 3)
  images, movie = draw(plain)
  refining = dataclasses.replace(plain, refine_draws=2, refine_logsnr=3.0)
  refined, refined_movie = draw(refining)
  assert refined.shape == images.shape and np.any(refined != images)
  for field in ('x_t', 'x0'):
    np.testing.assert_array_equal(getattr(refined_movie, field), getattr(movie, field))
  # Without a movie (what eval and show draw), the same sprites.
  no_movie, _ = drawing.generate(drawing.make_sample_fn(model, refining, mesh, 0), params, 0,
                                 context, 4, mesh, 0)
  np.testing.assert_array_equal(no_movie, refined)


def test_the_movie_s_last_frame_says_what_was_done_after_the_sampler():
  images = np.full((2, 16, 16, 3), 255, np.uint8)
  movie = samplers.Movie(images[None], images[None], np.array([0]), np.array([1.0]))
  plain, after = (denoising.movie_frames(images, movie, 1, 2, 'ddim', 4, note)
                  for note in ('', 'refined (8 x logSNR 4)'))
  np.testing.assert_array_equal(plain[0], after[0])  # the sampler's own frames are untouched
  assert plain[-1].shape != after[-1].shape or np.any(plain[-1] != after[-1])
