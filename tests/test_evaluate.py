"""--mode=eval end to end on a tiny run; the floor; the audit on real copies; bad input fails."""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from configs import sprites
from diffusion import schedules
from experiments import evaluate, from_config, train
from experiments.data import dataset
from experiments.quality import audit, colors, cross_validate, feature_cache, features
from experiments.quality import floor as floor_lib
from experiments.quality import grain, metrics
from experiments.quality import noise_left
from experiments.quality import report as quality_report

# A feature network of a few steps: the pipeline, not its quality, is under test here.
QUICK = {'eval.feature_steps': 20, 'eval.repeats': 2, 'eval.nearest_shown': 6}


def _eval_config(data_dir, **overrides):
  return tiny_config(data_dir, **{**QUICK, **overrides})


def test_training_ends_with_an_eval_that_writes_every_output(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = _eval_config(data_dir, **{'eval.at_end': True, 'eval.num_samples': 24,
                                     'sample.gif': False})
  train.run(config, workdir)
  report = json.load(open(os.path.join(workdir, 'eval.json')))
  assert report['step'] == 2 and report['samples']['count'] == 24
  assert report['reference'] == {'split': 'test', 'count': report['reference']['count']}
  assert report['set_size'] == 24 and report['repeats'] == 2
  for name in ('fid', 'kid', 'precision', 'recall'):
    assert {'samples', 'samples_std', 'floor', 'floor_std', 'ratio'} <= set(report[name])
  assert report['fid']['floor'] > 0 and not report['fid']['stable']
  assert any('FID' in w for w in report['warnings']), 'too few samples must be flagged'
  assert 0 <= report['conditional_accuracy']['samples'] <= 1
  assert report['feature_net']['version'] == features.VERSION
  mem = report['memorization']
  assert mem['samples']['count'] == 24
  assert mem['real_heldout']['count'] == min(report['reference']['count'], audit.BASELINE_SPRITES)
  assert set(report['seconds']) == {'data', 'sampling', 'feature_net', 'metrics', 'total'}
  png = Image.open(os.path.join(workdir, 'nearest.png'))
  assert png.size[0] > 3 * 64 and png.size[1] > 2 * 64  # 6 cases, 3 per row, 4x sprites
  assert os.path.exists(os.path.join(workdir, 'eval', 'step000002_ddim4.json'))
  again = np.load(os.path.join(workdir, 'eval', 'step000002_ddim4_samples.npz'))
  assert again['images'].shape == (24, 16, 16, 3) and again['labels'].shape == (24,)
  assert list(again['class_names'])[0] == 'smileys_emotion'  # eval.samples checks them
  assert report['grain']['samples'] == pytest.approx(grain.grain(again['images']))
  assert report['grain']['ratio'] == pytest.approx(
      report['grain']['samples'] / report['grain']['real_heldout'])
  real = {split: dataset.load(config.data, split).images for split in ('train', 'test')}
  assert report['colors'] == colors.report(again['images'], real['test'], real['train'])


def test_copied_training_sprites_are_all_copies_and_held_out_ones_are_not(tmp_path, data_dir,
                                                                          monkeypatch):
  monkeypatch.setattr(audit, 'BASELINE_SPRITES', 40)  # a test split larger than the baseline
  config = _eval_config(data_dir)
  real = dataset.load(config.data, 'train')
  copies = np.concatenate([real.images[:100], real.images[100:200, :, ::-1]])  # half mirrored
  path = str(tmp_path / 'copies.npz')
  np.savez(path, images=copies, labels=real.labels[:200])
  config.eval.samples = path
  report = evaluate.run(config, str(tmp_path / 'eval'))
  samples, heldout = report['memorization']['samples'], report['memorization']['real_heldout']
  assert samples['exact_copy_rate'] == 1.0 and samples['near_copy_rate'] == 1.0
  # Symmetric sprites match either way round, so about half, not exactly.
  assert samples['mirrored_share'] == pytest.approx(0.5, abs=0.05)
  assert heldout['exact_copy_rate'] == 0.0 and heldout['near_copy_rate'] < 0.05
  test = dataset.load(config.data, 'test')
  assert heldout['count'] == 40 < len(test.images)
  # The baseline's features are those of the same 40 sprites: recomputed here from scratch.
  rows, block = audit.baseline_rows(len(test.images)), config.eval.batch_size
  net = evaluate.feature_net(config, real, test)
  train_f = features.embed(net, np.asarray(metrics.with_mirrors(real.images)), block)[0]
  own = audit.nearest_training(test.images[rows], features.embed(net, test.images[rows], block)[0],
                               real.images, train_f, block)
  expected = audit.summarize(own, len(real.images), config.eval.near_copy)
  assert heldout['pixel_distance'] == expected['pixel_distance']
  assert heldout['feature_distance'] == pytest.approx(expected['feature_distance'], abs=1e-3)
  assert report['memorization']['pixel_closer_than_heldout_p5'] == 1.0
  assert 'drawing its training sprites back' in ' '.join(quality_report.verdict(report))
  assert os.path.exists(str(tmp_path / 'eval' / 'eval' / 'copies_file_nearest.png'))
  assert quality_report.summary(report).startswith('eval of copies_file: 200 samples vs')


@pytest.mark.parametrize('pixel, feature, words', [
    (0.0, 0.012, 'as new as real sprites'),          # the main job
    (0.037, 0.102, 'leaning towards the training set'),  # the H100 run after 818 passes
    (0.959, 0.947, 'drawing its training sprites back'),  # 736 passes over 174 sprites
])
def test_the_verdict_names_samples_nearer_the_training_set_than_held_out_ones(pixel, feature,
                                                                             words):
  mem = {'pixel_closer_than_heldout_p5': pixel, 'feature_closer_than_heldout_p5': feature}
  assert quality_report._novelty_words(mem).startswith(f'{100 * max(pixel, feature):.0f}% of')
  assert words in quality_report._novelty_words(mem)


def _features(rng, n, shift=0.0):
  centers = rng.normal(size=(6, 8)) * 3
  return (centers[rng.integers(0, 6, n)] + rng.normal(size=(n, 8)) + shift).astype(np.float32)


def test_the_floor_is_positive_and_small_and_real_samples_score_like_it():
  rng = np.random.default_rng(0)
  ref, groups = _features(rng, 400), np.arange(400) // 2  # groups of two variants
  cfg = {'seed': 0, 'repeats': 4, 'knn': 3, 'block': 128}
  rng = np.random.default_rng(0)  # the same mixture centers, fresh points
  like_real = floor_lib.distribution_metrics(_features(rng, 800), ref, groups, **cfg)
  shifted = _features(np.random.default_rng(0), 800, shift=2.0)
  off = floor_lib.distribution_metrics(shifted, ref, groups, **cfg)
  assert like_real['set_size'] == 200
  floor = like_real['fid']['floor']
  assert 0 < floor < 0.1 * off['fid']['samples']
  assert like_real['fid']['ratio'] < 1.5 < off['fid']['ratio']
  assert abs(like_real['kid']['samples']) < off['kid']['samples'] / 10
  assert off['precision']['samples'] < 0.5 * like_real['precision']['samples']


def test_group_halves_keep_groups_together_and_cover_the_split():
  groups = np.repeat(np.arange(50), 3)
  a, b = floor_lib.group_halves(groups, seed=1)
  assert not set(groups[a]) & set(groups[b])
  assert sorted(np.concatenate([a, b])) == list(range(150)) and abs(len(a) - len(b)) <= 3


def test_samples_follow_the_training_class_proportions():
  labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
  drawn = evaluate.proportional_labels(labels, 3, 25)
  assert list(np.bincount(drawn)) == [15, 8, 2] or list(np.bincount(drawn)) == [15, 7, 3]
  assert len(drawn) == 25 and list(evaluate.proportional_labels(labels, 0, 3)) == [-1, -1, -1]


@pytest.mark.parametrize('version', [2, 3, 4, 5])
def test_the_feature_network_is_deterministic_and_cached(tmp_path, data_dir, version):
  config = _eval_config(data_dir)
  real = dataset.load(config.data, 'train')
  recipe = features.Recipe(steps=3, seed=0, batch_size=8, version=version)
  a = features.train_params(real.images[:64], real.labels[:64], 8, recipe)
  b = features.train_params(real.images[:64], real.labels[:64], 8, recipe)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  config.data.data_dir = str(tmp_path)  # a fresh cache folder, the same dataset name
  test = dataset.load(config.data, 'test')
  folder = feature_cache.cache_dir(config.data.data_dir, 'sprites_x', recipe)
  first = feature_cache.load_or_train(folder, real, test, dataset_name='sprites_x', recipe=recipe)
  again = feature_cache.load_or_train(folder, real, test, dataset_name='sprites_x', recipe=recipe)
  assert again.info == first.info and 0 <= first.info['test_accuracy'] <= 1
  assert first.info['train_accuracy'] == features.class_accuracy(first, real.images, real.labels)
  assert first.info['batch_size'] == 8 and first.info['width'] == 32
  assert first.info['pool'] == 'mean_max' and first.info['version'] == version
  assert f'-v{version}-' in folder and first.norm == again.norm == (version == 3)
  f1, f2 = features.embed(first, test.images[:10])[0], features.embed(again, test.images[:10])[0]
  np.testing.assert_array_equal(f1, f2)
  if version == 3:  # embedding normalises: the same weights read without GroupNorm differ
    unnormed = features.embed(dataclasses.replace(first, norm=False), test.images[:10])[0]
    assert not np.allclose(f1, unnormed)


def test_eval_feature_version_picks_its_network():
  config = sprites.get_config('smoke')
  default = evaluate.feature_recipe(config.eval)
  config.eval.feature_version = 3
  normed = evaluate.feature_recipe(config.eval)
  assert default.version == features.VERSION == 2 and not default.norm
  assert normed.version == 3 and normed.norm
  x = jnp.zeros((1, 16, 16, 3))
  names = [set(features.SpriteNet(7, norm=r.norm).init(jax.random.key(0), x)['params'])
           for r in (default, normed)]
  assert names[0] == {f'Conv_{i}' for i in range(6)} | {f'Dense_{i}' for i in range(3)}
  assert names[1] - names[0] == {f'GroupNorm_{i}' for i in range(6)}  # one per convolution
  with pytest.raises(ValueError, match='version 6'):
    features.Recipe(version=6)


def test_version_5_shows_a_share_of_the_training_sprites_in_gray(data_dir, monkeypatch):
  assert features.Recipe(version=5).gray == 0.2 and features.Recipe().gray == 0.0
  assert features.Recipe(version=5).key() != features.Recipe().key()
  x = jax.random.uniform(jax.random.key(1), (400, 4, 4, 3), minval=-1, maxval=1)
  x = x.at[:, 0, 0].set(1.0)  # a white pixel
  gray = np.asarray(features._to_gray(jax.random.key(2), x, 0.2))  # pylint: disable=protected-access
  grayed = np.all(gray == gray[..., :1], axis=(1, 2, 3))
  assert 40 < grayed.sum() < 120  # about a fifth, drawn per sprite
  np.testing.assert_allclose(gray[grayed][..., 0], np.asarray(x)[grayed].mean(-1), atol=1e-6)
  np.testing.assert_array_equal(gray[~grayed], np.asarray(x)[~grayed])
  assert np.all(gray[:, 0, 0] == 1.0)
  # training sees them: all in gray, one step moves the weights otherwise than version 2's
  real = dataset.load(_eval_config(data_dir).data, 'train')
  monkeypatch.setitem(features.VERSIONS, 5, features.Version(gray=1.0))
  two, five = (features.train_params(real.images[:64], real.labels[:64], 8,
                                     features.Recipe(steps=1, batch_size=8, version=v))
               for v in (2, 5))
  assert not np.allclose(two['params']['Conv_0']['kernel'], five['params']['Conv_0']['kernel'])


def test_version_4_embeds_with_the_running_average_of_the_weights(data_dir, monkeypatch):
  config = _eval_config(data_dir)
  real = dataset.load(config.data, 'train')
  images, labels = real.images[:64], real.labels[:64]
  last = features.train_params(images, labels, 8, features.Recipe(steps=1, batch_size=8))
  averaged = features.Recipe(steps=1, batch_size=8, version=4)
  assert averaged.ema_decay == 0.999 and not averaged.norm
  # one step of a 0.75 average: three quarters the initial weights, a quarter those after it
  monkeypatch.setitem(features.VERSIONS, 4, features.Version(ema_decay=0.75))
  x = jnp.asarray(dataset.to_model(images[:1]))
  init = features.SpriteNet(8).init(jax.random.fold_in(jax.random.key(0), 0), x)
  got = features.train_params(images, labels, 8, averaged)
  jax.tree.map(lambda g, a, b: np.testing.assert_allclose(g, 0.75 * a + 0.25 * b, atol=1e-6),
               got, init, last)
  assert not np.allclose(*(np.asarray(p['params']['Conv_0']['kernel']) for p in (got, last)))


def test_the_feature_cache_key_changes_with_every_setting():
  """A network trained with other settings is never read back as this one."""
  base = features.Recipe()
  changed = [features.Recipe(steps=2000), features.Recipe(seed=1), features.Recipe(width=8),
             features.Recipe(batch_size=128), features.Recipe(learning_rate=1e-3),
             features.Recipe(pool='flatten'), features.Recipe(version=3),
             features.Recipe(version=4)]
  folders = {feature_cache.cache_dir('/d', 'emoji_16-1.2.0', r) for r in [base] + changed}
  assert len(folders) == 1 + len(changed)
  folder = functools.partial(feature_cache.cache_dir, '/d')
  assert folder('emoji', base) == folder('emoji', features.Recipe())
  assert folder('emoji', base) != folder('dawnlike', base)
  # readable at a glance, and version 2's folders keep the names they had before the version
  # became a field, so the networks cached then are still read
  assert base.key() == 'v2-steps3000-seed0-1b430893'


@pytest.mark.parametrize('images, message', [
    (np.zeros((4, 16, 16, 3), np.float32), 'float32'),
    (np.zeros((4, 32, 32, 3), np.uint8), 'image_size'),
    (np.zeros((0, 16, 16, 3), np.uint8), 'non-empty'),
])
def test_bad_sample_files_fail_clearly(tmp_path, data_dir, images, message):
  path = str(tmp_path / 'bad.npz')
  np.savez(path, images=images)
  with pytest.raises(ValueError, match=message):
    evaluate.run(_eval_config(data_dir, **{'eval.samples': path}), str(tmp_path))


def test_samples_drawn_for_other_classes_are_refused_by_name(tmp_path, data_dir):
  path = str(tmp_path / 'cats.npz')
  np.savez(path, images=np.zeros((4, 16, 16, 3), np.uint8), labels=np.array([0, 1, 0, 1]),
           class_names=np.asarray(['cats', 'dogs']))
  with pytest.raises(ValueError, match='drawn for the classes cats, dogs, but this config.s data '
                     'has smileys_emotion, .*pass the data.. flags of the run that drew it'):
    evaluate.run(_eval_config(data_dir, **{'eval.samples': path}), str(tmp_path))


def test_missing_inputs_fail_clearly(tmp_path, data_dir):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    evaluate.run(_eval_config(data_dir), str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='no such file'):
    evaluate.run(_eval_config(data_dir, **{'eval.samples': str(tmp_path / 'x.npz')}), str(tmp_path))
  with pytest.raises(ValueError, match='eval.reference'):
    evaluate.run(_eval_config(data_dir, **{'eval.reference': 'val'}), str(tmp_path))


def test_fid_in_the_sprite_space_rises_with_noise(data_dir):
  """Heusel et al.'s sanity check: more damage, larger distance to real sprites."""
  config = _eval_config(data_dir)
  real, test = dataset.load(config.data, 'train'), dataset.load(config.data, 'test')
  recipe = features.Recipe(steps=200)  # 20 steps train too little damage head to rely on
  net = feature_cache.load_or_train(
      feature_cache.cache_dir(config.data.data_dir, 'emoji_quick', recipe), real, test,
      dataset_name='emoji_quick', recipe=recipe)
  ref_f = features.embed(net, test.images)[0]
  clean = dataset.to_model(real.images[:300])
  rng = np.random.default_rng(0)
  fids = []
  for sigma in (0.0, 0.1, 0.3):
    noisy = dataset.to_uint8(clean + sigma * rng.normal(size=clean.shape))
    e = config.eval
    report = floor_lib.distribution_metrics(features.embed(net, noisy)[0], ref_f, test.groups,
                                            knn=e.knn, repeats=e.repeats, seed=e.seed,
                                            block=e.batch_size)
    fids.append(report['fid']['samples'])
  assert fids[0] < fids[1] < fids[2] and fids[2] > 2 * report['fid']['floor']


def test_cross_validation_keeps_groups_whole_and_scores_a_copier_of_the_fitted_folds(
    data_dir, monkeypatch):
  real = dataset.load(_eval_config(data_dir).data, 'train')
  group_of = {x.tobytes(): g for x, g in zip(real.images, real.groups)}
  fitted, held, scored = [], [], []
  real_train, real_metrics = features.train_params, floor_lib.distribution_metrics

  def recording(images, labels, num_classes, recipe):
    fitted.append({group_of[x.tobytes()] for x in images})
    return real_train(images, labels, num_classes, recipe)
  monkeypatch.setattr(features, 'train_params', recording)
  real_accuracy = features.class_accuracy
  monkeypatch.setattr(features, 'class_accuracy', lambda net, images, labels: held.append(
      [group_of[x.tobytes()] for x in images]) or real_accuracy(net, images, labels))
  monkeypatch.setattr(floor_lib, 'distribution_metrics', lambda fake, ref, groups, **kw: (
      scored.append((len(fake), len(ref), set(groups.tolist()), kw)) or
      real_metrics(fake, ref, groups, **kw)))
  scores = cross_validate.folds(real, features.Recipe(steps=3, batch_size=8), 3, knn=2,
                                repeats=2, seed=5, block=64)
  assert len(scores) == 3 and all(0 <= s['accuracy'] <= 1 for s in scores)
  assert sum(map(len, held)) == len(real.images)  # every sprite held out once
  assert set().union(*map(set, held)) == set(real.groups.tolist())
  for groups, out in zip(fitted, held):  # no group on both sides: variants are not learnt twice
    assert out and not groups & set(out)
  for groups, out, (n_fake, n_ref, ref_groups, kw), s in zip(fitted, held, scored, scores):
    # the copier is the fitted folds' sprites, judged against the held fold's halves
    assert n_fake == len(real.images) - len(out) and n_ref == len(out)
    assert ref_groups == set(out) and kw == dict(knn=2, repeats=2, seed=5, block=64)
    assert s['copier_fid_ratio'] > 0 and 0 <= s['copier_recall'] <= 1 and s['set_size'] > 3


def test_cross_validation_refuses_folds_too_small_for_a_copier(data_dir):
  real = dataset.load(_eval_config(data_dir).data, 'train')
  with pytest.raises(ValueError, match='fewer --folds'):
    cross_validate.folds(real, features.Recipe(steps=3, batch_size=8), len(real.images) // 4,
                         knn=3, repeats=2, seed=0, block=64)


def test_noise_left_is_zero_for_a_perfect_denoiser_and_one_for_one_that_does_nothing(data_dir):
  test = dataset.load(_eval_config(data_dir).data, 'test')
  x0 = jnp.asarray(dataset.to_model(test.images))
  logsnr_fn, key = schedules.cosine(), jax.random.key(0)
  alpha = lambda t: schedules.alpha_sigma(logsnr_fn(t))[0][:, None, None, None]  # from t alone
  perfect = lambda x_t, t, logsnr: (x0, None)
  nothing = lambda x_t, t, logsnr: (x_t / alpha(t), None)
  clipped = lambda x_t, t, logsnr: (jnp.clip(x_t / alpha(t), -1, 1), None)
  (exact,) = noise_left.measure(perfect, x0, logsnr_fn, [4.0], key)
  assert exact['noise_left'] == 0 and exact['grain'] == pytest.approx(grain.grain(test.images))
  for record, clip in zip(noise_left.measure(nothing, x0, logsnr_fn, [0.0, 6.0], key),
                          noise_left.measure(clipped, x0, logsnr_fn, [0.0, 6.0], key)):
    assert record['noise_left'] == pytest.approx(1, abs=0.05)  # t matches logsnr
    assert record['grain'] > 1.2 * exact['grain']  # noise is grain
    assert clip['noise_left'] == pytest.approx(clip['input_noise_left'], rel=1e-5)
    assert clip['grain'] == pytest.approx(clip['input_grain'])
    assert clip['noise_left'] < record['noise_left']  # clipping to [-1, 1] removes some
  # Averaged over 4 noisings (sample.refine_draws), the do-nothing error keeps a quarter.
  (averaged,) = noise_left.measure(nothing, x0, logsnr_fn, [2.0], key, draws=4)
  assert averaged['noise_left'] == pytest.approx(0.25, abs=0.02) and averaged['draws'] == 4


def test_noise_left_measures_a_trained_run_plain_and_guided_and_fails_clearly(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = _eval_config(data_dir, **{'sample.guidance': 1.0, 'sample.autoguidance': 0.5,
                                     'sample.guide_step': 1})
  train.run(config, workdir)
  test = dataset.load(config.data, 'test')
  x0 = jnp.asarray(dataset.to_model(test.images[:20]))
  logsnr_fn = from_config.logsnr_fn(config.diffusion)
  levels = noise_left.check_levels(['1', '5'], logsnr_fn)
  left = []
  for guided in (False, True):
    step, denoise = noise_left.make_denoise(
        config, workdir, test.num_classes, test.labels[:20], guided)
    records = noise_left.measure(denoise, x0, logsnr_fn, levels, jax.random.key(0))
    assert step == 2 and [r['logsnr'] for r in records] == [1.0, 5.0]
    assert all(np.isfinite(r['noise_left']) and r['noise_left'] > 0 for r in records)
    left.append(records[0]['noise_left'])
  assert left[0] != left[1]  # --guided draws with the guide and CFG, not the plain network
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    noise_left.make_denoise(config, str(tmp_path / 'empty'), test.num_classes, test.labels,
                         False)
  for bad in (['inf'], ['nan'], ['x'], ['-30'], ['30'], []):  # -30: past the noisiest level
    with pytest.raises(ValueError, match='--logsnr'):
      noise_left.check_levels(bad, logsnr_fn)
