"""The metric math against float64 references and closed forms; the audit's copy detection."""
from math import comb

import numpy as np
import pytest
import scipy.linalg

from experiments.data import palette
from experiments.quality import audit, colors, grain, metrics
from experiments.quality import report as quality_report
from experiments.sample import snap_to_palette


def _gaussian(rng, n, d, shift=0.0, scale=1.0):
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return (rng.normal(size=(n, d)) * scale) @ mix + shift


def _fid_reference(x, y):
  """The textbook formula in float64 with scipy's general sqrtm."""
  m1, m2 = x.mean(0), y.mean(0)
  c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(c1 @ c2).real
  return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * covmean))


def test_fid_of_a_set_against_itself_is_zero():
  x = _gaussian(np.random.default_rng(0), 2000, 32, scale=3.0)
  trace = np.trace(np.cov(x, rowvar=False))
  assert abs(float(metrics.fid(x, x))) < 1e-5 * trace


def test_fid_matches_the_float64_formula():
  rng = np.random.default_rng(1)
  x, y = _gaussian(rng, 3000, 16), _gaussian(rng, 2000, 16, shift=0.3, scale=1.5)
  np.testing.assert_allclose(float(metrics.fid(x, y)), _fid_reference(x, y), rtol=1e-3)


def _moments(mu, cov):
  """E[x], E[x x], E[x x x] of N(mu, cov) as tensors."""
  m3 = np.einsum('a,b,c->abc', mu, mu, mu)
  m3 = m3 + np.einsum('a,bc->abc', mu, cov) + np.einsum('b,ac->abc', mu, cov)
  m3 = m3 + np.einsum('c,ab->abc', mu, cov)
  return [1.0, mu, cov + np.outer(mu, mu), m3]


def _kernel_mean(p, q, d):
  """E k(x, y), x ~ P, y ~ Q independent: (x.y/d + 1)^3 = sum_j C(3,j) (x.y)^j / d^j, and
  E (x.y)^j is the inner product of the j-th moment tensors."""
  return sum(comb(3, j) * np.sum(np.multiply(p[j], q[j])) / d**j for j in range(4))


def test_kid_is_unbiased_on_gaussians_with_known_answer():
  d, n, trials = 4, 30, 300
  mu_p, mu_q = np.zeros(d), np.full(d, 0.25)
  cov_p, cov_q = np.eye(d), np.diag([1.0, 1.2, 0.8, 1.0])
  p, q = _moments(mu_p, cov_p), _moments(mu_q, cov_q)
  exact = _kernel_mean(p, p, d) + _kernel_mean(q, q, d) - 2 * _kernel_mean(p, q, d)
  rng = np.random.default_rng(2)
  lp, lq = np.linalg.cholesky(cov_p), np.linalg.cholesky(cov_q)
  same, diff = [], []
  for _ in range(trials):
    x = rng.normal(size=(n, d)) @ lp.T + mu_p
    y = rng.normal(size=(n, d)) @ lq.T + mu_q
    x2 = rng.normal(size=(n, d)) @ lp.T + mu_p
    diff.append(float(metrics.kid(x, y, block=8)))  # block < n: the blocked sums and padding
    same.append(float(metrics.kid(x, x2, block=8)))
  se = lambda v: np.std(v) / np.sqrt(trials)
  assert exact > 10 * se(diff), 'the test needs a clearly non-zero answer'
  assert abs(np.mean(diff) - exact) < 4 * se(diff)
  assert abs(np.mean(same)) < 4 * se(same)


def test_kid_blocks_do_not_change_the_value():
  rng = np.random.default_rng(3)
  x, y = _gaussian(rng, 101, 8), _gaussian(rng, 77, 8, shift=0.2)
  np.testing.assert_allclose(float(metrics.kid(x, y, block=16)),
                             float(metrics.kid(x, y, block=512)), rtol=1e-4, atol=1e-6)


def test_knn_radii_match_brute_force():
  x = np.random.default_rng(4).normal(size=(50, 5)).astype(np.float32)
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  np.testing.assert_allclose(np.asarray(metrics.knn_radii(x, 3, block=16)),
                             np.sort(d, axis=1)[:, 3], rtol=1e-4)


def test_precision_recall_tell_fidelity_from_diversity():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(500, 4))
  p, r = metrics.precision_recall(real, rng.normal(size=(500, 4)))
  assert p > 0.85 and r > 0.85, 'same distribution: both high'
  collapsed = rng.normal(size=(500, 4)) * 0.1  # every sample in one small mode
  p, r = metrics.precision_recall(real, collapsed)
  assert p > 0.95 and r < 0.3, 'mode collapse: faithful but not diverse'
  p, r = metrics.precision_recall(real, rng.normal(size=(500, 4)) + 10.0)
  assert p == 0 and r == 0, 'off the manifold: neither'


def test_nearest_l2_matches_brute_force():
  rng = np.random.default_rng(6)
  q, k = rng.normal(size=(37, 8)), rng.normal(size=(90, 8))
  d = np.sqrt(((q[:, None] - k[None]) ** 2).sum(-1))
  idx, dist = metrics.nearest_l2(q, k, block=8)
  np.testing.assert_array_equal(np.asarray(idx), d.argmin(1))
  np.testing.assert_allclose(np.asarray(dist), d.min(1), rtol=1e-4, atol=1e-4)


def _sprites(rng, n):
  """Blocky random sprites (4x4 color cells), so that they are far apart from each other."""
  cells = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
  return np.repeat(np.repeat(cells, 4, axis=1), 4, axis=2)


def test_nearest_mad_is_exact_and_finds_copies_and_mirrors():
  rng = np.random.default_rng(7)
  train = _sprites(rng, 300)
  keys = np.asarray(metrics.with_mirrors(train))
  edited = train[:20].copy()
  edited[:, 0, 0] = 255 - edited[:, 0, 0]  # one pixel repainted: a near copy
  queries = np.concatenate([train[:50], train[50:100, :, ::-1], edited, _sprites(rng, 30)])
  idx, dist = (np.asarray(a) for a in metrics.nearest_mad(queries, keys, block=32))
  brute = np.abs(queries.reshape(len(queries), 1, -1).astype(int)
                 - keys.reshape(1, len(keys), -1).astype(int)).mean(-1)
  np.testing.assert_allclose(dist, brute.min(1), rtol=1e-6)
  np.testing.assert_array_equal(idx[:50], np.arange(50))
  np.testing.assert_array_equal(idx[50:100], np.arange(50, 100) + 300)  # matched to the mirror
  assert np.all(dist[:100] == 0) and np.all((dist[100:120] > 0) & (dist[100:120] <= 1.0))


def test_copy_rates_of_copies_and_of_new_sprites():
  rng = np.random.default_rng(8)
  train = _sprites(rng, 200)
  keys = metrics.with_mirrors(train)
  copied = np.concatenate([train[:100], train[100:, :, ::-1]])
  rates = metrics.copy_rates(metrics.nearest_mad(copied, keys)[1], near_threshold=2.0)
  assert float(rates['exact']) == 1.0 and float(rates['near']) == 1.0
  rates = metrics.copy_rates(metrics.nearest_mad(_sprites(rng, 100), keys)[1], near_threshold=2.0)
  assert float(rates['exact']) == 0.0 and float(rates['near']) == 0.0


@pytest.mark.parametrize('n', [1, 7, 64])
def test_map_row_blocks_handles_any_row_count(n):
  x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
  out = metrics.map_row_blocks(lambda b: b.sum(1), x, 16)
  np.testing.assert_allclose(np.asarray(out), x.sum(1))


def _sprites_of_flat_regions(n=6, size=16, seed=0):
  """Sprites of two or three flat colors each: a white background, a block, a bar."""
  rng = np.random.default_rng(seed)
  x = np.full((n, size, size, 3), 250, np.uint8)
  for i in range(n):
    y0, x0 = rng.integers(2, 8, 2)
    x[i, y0:y0 + 6, x0:x0 + 6] = rng.integers(0, 200, 3)
    x[i, 12:14, 2:14] = rng.integers(0, 200, 3)
  return x


def test_grain_is_0_for_flat_regions_and_unchanged_when_a_sprite_is_paler():
  flat = _sprites_of_flat_regions()
  assert grain.grain(flat) == 0.0
  noisy = flat.astype(np.int16) + np.random.default_rng(1).integers(-12, 13, flat.shape)
  noisy = np.clip(noisy, 0, 255).astype(np.uint8)
  assert grain.grain(noisy) > 0.05
  # half the contrast (even values halve exactly): both sums halve, the ratio stays
  even = (noisy // 2) * 2
  paler = (even // 2 + 100).astype(np.uint8)
  assert grain.grain(paler) == pytest.approx(grain.grain(even), rel=1e-6)


def test_grain_finds_a_speckle_and_ignores_pixels_outside_the_sprite():
  flat = np.full((1, 4, 4, 3), 200, np.uint8)
  flat[0, 1, 2] = (0, 200, 200)  # one speckle: 200 away from all 4 neighbors in one channel
  nearest, farthest = grain.pixel_steps(flat)
  assert nearest[0, 1, 2] == 200 and farthest[0, 1, 2] == 200
  assert nearest[0, 0, 2] == 0 and farthest[0, 0, 2] == 200  # its neighbor: an edge, not noise
  corner = np.zeros((1, 2, 2, 3), np.uint8)
  corner[0, 0, 0] = 255  # its two neighbors inside the sprite both differ; no padding counts
  assert grain.pixel_steps(corner)[0][0, 0, 0] == 255
  r = grain.report(flat, np.full((3, 4, 4, 3), 9, np.uint8))
  assert r['samples'] > 0 and r['real_heldout'] == 0.0 and r['ratio'] is None
  with pytest.raises(ValueError, match='at least 2x2'):
    grain.grain(np.zeros((2, 1, 5, 3), np.uint8))


def test_pixel_shares_tell_a_speck_from_a_fill_that_is_not_quite_flat():
  fill = np.full((2, 4, 4, 3), 200, np.uint8)
  fill[0, 1, 2] = (200, 200 - grain.APART, 200)  # a speck: APART levels from all 4 neighbors
  fill[1, 1, 2] = (200, 201 - grain.APART, 200)  # one level short of a speck
  shares = grain.pixel_shares(fill)
  assert shares == {'flat': pytest.approx(30 / 32), 'apart': pytest.approx(1 / 32)}
  wobble = np.full((2, 4, 4, 3), 200, np.uint8)
  wobble[:, ::2, ::2] += 1  # a fill whose shade wobbles by one level, every pixel off its neighbors
  wobble[:, 1::2, 1::2] += 1
  r = grain.report(wobble, fill)
  assert r['flat'] == {'samples': 0.0, 'real_heldout': pytest.approx(30 / 32)}
  assert r['apart'] == {'samples': 0.0, 'real_heldout': pytest.approx(1 / 32)}
  assert grain.pixel_shares(fill[:0]) == {'flat': None, 'apart': None}


def test_the_grain_words_name_a_fill_not_quite_flat_and_specks():
  def words(ratio, flat, apart):
    g = {'samples': 0.1 * ratio, 'real_heldout': 0.1, 'ratio': ratio,
         'flat': {'samples': flat, 'real_heldout': 0.6},
         'apart': {'samples': apart, 'real_heldout': 0.2}}
    return '; '.join(quality_report.verdict({**_verdict_base(), 'grain': g}))
  assert 'fills as smooth as real ones;' in words(1.0, 0.6, 0.2)
  assert ('but not exactly flat (10% of pixels equal a neighbor, real sprites 60%)'
          in words(1.0, 0.1, 0.2))
  assert 'specks' not in words(1.0, 0.1, 0.2) and 'specks' not in words(1.5, 0.6, 0.2)
  assert ('40% of pixels apart from every neighbor (real sprites 20%): specks'
          in words(1.0, 0.6, 0.4))
  assert '1.5x as grainy (speckled, blotchy fills), 40% of pixels apart' in words(1.5, 0.1, 0.4)
  assert 'apart' not in ' '.join(quality_report.verdict(
      {**_verdict_base(), 'grain': {'samples': 0.1, 'real_heldout': 0.1, 'ratio': 1.0}}))


_INKS = np.array([[200, 40, 40], [40, 160, 40], [40, 40, 200], [120, 80, 20]], np.uint8)


def _sprites_on(rng, n, weights, paper=255):
  """n 8x8 sprites on a `paper` background: a 4x4 block of one ink each (drawn with `weights`),
  one pixel of it black, and an antialiased edge pixel 5 from the paper."""
  x = np.full((n, 8, 8, 3), paper, np.uint8)
  x[:, 2:6, 2:6] = _INKS[rng.choice(len(_INKS), n, p=weights)][:, None, None]
  x[:, 3, 3] = 0
  x[:, 2, 6] = abs(paper - 5)
  return x


def test_color_use_is_the_real_mix_for_real_sprites_and_concentrated_for_one_ink():
  rng = np.random.default_rng(0)
  even = np.full(4, 0.25)
  train, held = _sprites_on(rng, 400, even), _sprites_on(rng, 200, even)
  bg, share = colors.background(train)
  assert bg.tolist() == [255, 255, 255] and share == 1.0
  edge = np.array([[255, 255, 200], [250, 250, 250]], np.uint8)  # far on one channel / near on all
  assert colors.is_foreground(edge, bg).tolist() == [True, False]
  counts = colors.color_counts(train[:1], bg, _INKS)  # the block; its black pixel to brown
  assert counts.sum() == 16 and counts.max() == 15 and counts[0, 3] >= 1
  like_real = colors.report(_sprites_on(rng, 300, even), held, train)
  assert like_real['palette_size'] == 5  # the four inks and black, all the set has
  assert like_real['distance']['samples'] < 0.1 and like_real['distance']['real_train'] < 0.1
  # per sprite 15 ink pixels and 1 black: the top 3 of 5 colors hold about 3 * 15 / 4 / 16 of
  # them (a little more: the commonest 3 of four inks drawn at random)
  assert like_real['top_share']['real_heldout'] == pytest.approx(45 / 64, abs=0.05)
  one_ink = colors.report(_sprites_on(rng, 300, [1, 0, 0, 0]), held, train)
  assert one_ink['top_share']['samples'] == pytest.approx(1.0)
  assert one_ink['distance']['samples'] == pytest.approx(45 / 64, abs=0.05)  # 15/16 vs 15/64
  words = ' '.join(quality_report.verdict({**_verdict_base(), 'colors': one_ink}))
  assert 'fewer colors carry them' in words
  words = ' '.join(quality_report.verdict({**_verdict_base(), 'colors': like_real}))
  assert 'as spread as real ones' in words
  blank = colors.report(np.full((3, 8, 8, 3), 255, np.uint8), held, train)
  assert blank['distance']['samples'] is None and blank['top_share']['samples'] is None
  assert quality_report._color_words(blank) is None
  no_ink = colors.report(held, held, np.full((3, 8, 8, 3), 255, np.uint8))  # nothing to map to
  assert no_ink['palette_size'] == 0 and no_ink['distance']['samples'] is None


def test_color_use_compares_with_held_out_sprites_and_a_floor_of_the_samples_size():
  rng = np.random.default_rng(1)
  train = _sprites_on(rng, 400, [0.25, 0.25, 0.25, 0.25], paper=0)  # black paper
  held = _sprites_on(rng, 400, [0.7, 0.1, 0.1, 0.1], paper=0)  # another mix than training's
  bg, share = colors.background(train)
  assert bg.tolist() == [0, 0, 0] and share == 1.0  # the block's black pixel is background too
  r = colors.report(held[:200] + 0, held[200:], train)  # samples drawn like the held-out ones
  assert r['distance']['samples'] < 0.1 < r['distance']['real_train']
  assert r['top_share']['real_heldout'] == pytest.approx(0.9, abs=0.05)
  off = colors.report(train[:200], held[200:], train)  # samples drawn like the training ones
  assert off['distance']['samples'] > 0.3
  # a smaller set strays further from the same mix: the floor is drawn at the samples' size
  small, large = (colors.report(train[:n], train, train)['distance']['real_train'] for n in (10, 300))
  assert small > 2 * large


def test_color_use_maps_near_misses_to_the_training_colors_and_flags_a_mixed_background():
  rng = np.random.default_rng(2)
  train = _sprites_on(rng, 100, [0.5, 0.5, 0, 0])
  off = train.copy()
  off[:, 2:6, 2:6] = np.clip(off[:, 2:6, 2:6].astype(int) + 10, 0, 255)  # near-misses of its inks
  r = colors.report(off, train, train)
  assert r['distance']['samples'] < 0.05
  corners = train.copy()
  corners[:60, 0, 0] = corners[:60, -1, -1] = (9, 9, 9)  # 30% of the corners dark
  corners[:, 0, -1] = (1, 2, 3)                            # 25% another color
  mixed = colors.report(off, train, corners)
  assert mixed['background'] == [255, 255, 255] and mixed['background_share'] == 0.45
  base = {**_verdict_base(), 'reference': {'split': 'test'}, 'set_size': 1,
          'fid': {'ratio': 1.0, 'stable': True}}
  assert not quality_report.caveats({**base, 'colors': r})
  assert any('no one background' in w for w in quality_report.caveats({**base, 'colors': mixed}))


def _verdict_base():
  copies = {'exact_copy_rate': 0.0, 'near_copy_rate': 0.0}
  return {'fid': {'ratio': 1.0}, 'recall': {'samples': 0.8, 'floor': 0.8},
          'conditional_accuracy': {'samples': None}, 'feature_net': {'test_accuracy': None},
          'memorization': {'samples': copies, 'real_heldout': copies}}


def test_the_palette_snap_keeps_a_small_palette_and_moves_each_pixel_to_its_nearest_color():
  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 256, (3000, 3), dtype=np.uint8)
  pixels = np.concatenate([pixels, pixels[:1000], pixels[:1, ::-1]])  # repeats, and one reversed
  np.testing.assert_array_equal(palette.distinct(pixels), np.unique(pixels, axis=0))
  none = np.zeros((0, 3), np.uint8)
  assert palette.distinct(none).shape == (0, 3) and palette.nearest(none, pixels[:2]).shape == (0,)
  inks = rng.integers(0, 256, (9, 3), dtype=np.uint8)
  def brute_nearest(x, colors):
    d = (x.reshape(-1, 1, 3).astype(float) - colors[None].astype(float)) ** 2
    return np.argmin(d.sum(-1), axis=1)
  brute = brute_nearest(pixels, inks)
  np.testing.assert_array_equal(palette.nearest(pixels, inks), brute)  # matched per distinct color
  np.testing.assert_array_equal(palette.nearest(pixels.astype(float), inks), brute)
  sprites = inks[rng.integers(0, 9, (40, 8, 8))]
  np.testing.assert_array_equal(palette.fit(sprites, 16), np.unique(inks, axis=0))  # all, as few
  np.testing.assert_array_equal(snap_to_palette(sprites, sprites, 16), sprites)  # already on it
  drawn = np.clip(sprites.astype(int) + rng.integers(-6, 7, sprites.shape), 0, 255).astype(np.uint8)
  snapped = snap_to_palette(drawn, sprites, 16)
  np.testing.assert_array_equal(snapped.reshape(-1, 3), inks[brute_nearest(drawn, inks)])
  fewer = palette.fit(drawn, 4)  # k-means: at most k colors
  assert 1 <= len(fewer) <= 4 and fewer.dtype == np.uint8
  assert len(palette.distinct(snap_to_palette(drawn, drawn, 4).reshape(-1, 3))) <= 4
  assert snap_to_palette(drawn, sprites, 0) is drawn  # 0: off


def test_the_audit_baseline_is_every_held_out_sprite_or_the_same_fixed_share_of_many():
  small, large = audit.BASELINE_SPRITES, 5 * audit.BASELINE_SPRITES
  np.testing.assert_array_equal(audit.baseline_rows(small), np.arange(small))
  rows = audit.baseline_rows(large)
  assert len(np.unique(rows)) == small and (np.diff(rows) > 0).all() and rows[-1] < large
  assert rows[-1] > 4 * small and rows[0] < small  # drawn over the whole split, not its start
  np.testing.assert_array_equal(rows, audit.baseline_rows(large))  # the same every time
