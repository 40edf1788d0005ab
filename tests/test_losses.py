"""Prediction targets and loss weightings: round trips, closed forms, and target invariance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import gaussian, losses, schedules

PREDICTIONS = gaussian.PREDICTIONS
LOGSNR = jnp.array([-8.0, -2.0, 0.0, 1.5, 6.0])


def _data(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (jax.random.uniform(k1, (5, 4, 4, 3), minval=-1, maxval=1),
          jax.random.normal(k2, (5, 4, 4, 3)))


@pytest.mark.parametrize('prediction', PREDICTIONS)
def test_target_round_trips_to_x0_and_eps(prediction):
  x0, eps = _data()
  x_t = gaussian.diffuse(x0=x0, eps=eps, logsnr=LOGSNR)
  out = gaussian.target(x0=x0, eps=eps, logsnr=LOGSNR, prediction=prediction, sigma_data=0.5)
  x0_back, eps_back = gaussian.to_x0_eps(out=out, x_t=x_t, logsnr=LOGSNR, prediction=prediction,
                                         sigma_data=0.5)
  np.testing.assert_allclose(np.asarray(x0_back), np.asarray(x0), atol=2e-4)
  np.testing.assert_allclose(np.asarray(eps_back), np.asarray(eps), atol=2e-4)


def test_v_is_alpha_eps_minus_sigma_x0_and_edm_with_unit_sigma_data_is_minus_v():
  x0, eps = _data()
  alpha, sigma = (np.asarray(a)[:, None, None, None] for a in schedules.alpha_sigma(LOGSNR))
  v = gaussian.target(x0=x0, eps=eps, logsnr=LOGSNR, prediction='v')
  np.testing.assert_allclose(np.asarray(v), alpha * np.asarray(eps) - sigma * np.asarray(x0), atol=1e-5)
  f = gaussian.target(x0=x0, eps=eps, logsnr=LOGSNR, prediction='edm', sigma_data=1.0)
  np.testing.assert_allclose(np.asarray(f), -np.asarray(v), atol=1e-5)


def test_edm_scalings_match_karras_in_variance_exploding_form():
  """c_in, c_skip, c_out of EDM (Table 1), acting on x_ve = x_t / alpha."""
  sd = 0.5
  alpha, sigma = (np.asarray(a) for a in schedules.alpha_sigma(LOGSNR))
  s_ve = sigma / alpha
  c_in, c_skip, c_out = (np.asarray(c) for c in gaussian.edm_scalings(LOGSNR, sd))
  np.testing.assert_allclose(c_in * alpha, 1 / np.sqrt(s_ve**2 + sd**2), rtol=1e-5)
  np.testing.assert_allclose(c_skip * alpha, sd**2 / (s_ve**2 + sd**2), rtol=1e-5)
  np.testing.assert_allclose(c_out, s_ve * sd / np.sqrt(s_ve**2 + sd**2), rtol=1e-5)


def test_posterior_matches_ddpm_beta_tilde():
  """q(x_{t-1} | x_t, x0) of Ho et al. (eq. 6-7) on the course's discrete schedule."""
  T = 500
  betas = np.linspace(1e-4, 0.02, T)
  ab = np.cumprod(1 - betas)
  logsnr_fn = schedules.linear(timesteps=T)
  x0, x_t = (np.random.default_rng(1).normal(size=(1, 2, 2, 1)) for _ in range(2))
  for i in (1, 2, 100, 499):  # 1-based timestep t = i + 1 ... in the table's 0-based index i
    t, ab_t, ab_s, beta = i + 1, ab[i], ab[i - 1], betas[i]
    mean_ref = (np.sqrt(ab_s) * beta / (1 - ab_t)) * x0 + (np.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t)) * x_t
    var_ref = (1 - ab_s) / (1 - ab_t) * beta
    mean, std = gaussian.posterior(x_t=jnp.asarray(x_t, jnp.float32), x0=jnp.asarray(x0, jnp.float32),
                                   logsnr_t=logsnr_fn(jnp.float32(t / T)),
                                   logsnr_s=logsnr_fn(jnp.float32((t - 1) / T)))
    np.testing.assert_allclose(np.asarray(mean), mean_ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(float(np.asarray(std).ravel()[0]) ** 2, var_ref, rtol=2e-3)


def test_min_snr_weights_match_hang_et_al():
  snr = np.exp(np.asarray(LOGSNR))
  gamma = 5.0
  want = {'eps': np.minimum(snr, gamma) / snr, 'x0': np.minimum(snr, gamma),
          'v': np.minimum(snr, gamma) / (snr + 1)}
  for prediction, ref in want.items():
    got = losses.loss_weight('min_snr', logsnr=LOGSNR, prediction=prediction, min_snr_gamma=gamma)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)


def test_edm_weighting_on_edm_prediction_is_plain_mse():
  got = losses.loss_weight('edm', logsnr=LOGSNR, prediction='edm', sigma_data=0.5)
  np.testing.assert_allclose(np.asarray(got), 1.0, rtol=1e-5)


@pytest.mark.parametrize('weighting', [w for w in losses.WEIGHTINGS if w != 'simple'])
def test_a_weighting_means_the_same_for_every_prediction(weighting):
  """The same x0_hat costs the same, whatever the network predicts (only 'simple' differs)."""
  x0, eps = _data()
  x0_hat = x0 + 0.1 * _data(1)[1]
  x_t = gaussian.diffuse(x0=x0, eps=eps, logsnr=LOGSNR)
  eps_hat = gaussian.eps_from_x0(x_t=x_t, x0=x0_hat, logsnr=LOGSNR)
  costs = []
  for prediction in PREDICTIONS:
    out = gaussian.target(x0=x0_hat, eps=eps_hat, logsnr=LOGSNR, prediction=prediction)
    goal = gaussian.target(x0=x0, eps=eps, logsnr=LOGSNR, prediction=prediction)
    w = losses.loss_weight(weighting, logsnr=LOGSNR, prediction=prediction,
                           dlogsnr_dt=jnp.full_like(LOGSNR, -10.0))
    costs.append(np.asarray(w * jnp.mean(jnp.square(out - goal), axis=(1, 2, 3))))
  for c in costs[1:]:
    np.testing.assert_allclose(c, costs[0], rtol=2e-3)


def test_elbo_weight_uses_the_schedule_derivative():
  logsnr_fn = schedules.cosine()
  t = jnp.array([0.1, 0.5, 0.9])
  x0, eps = _data()
  x0, eps = x0[:3], eps[:3]
  zero_model = lambda x, t_, logsnr, context: jnp.zeros_like(x)  # eps_hat = 0: the loss is w * mean(eps^2)
  got = losses.diffusion_loss(model_fn=zero_model, x0=x0, t=t, eps=eps, context=None,
                              logsnr_fn=logsnr_fn,
                              prediction='eps', weighting='elbo')
  h = 1e-3
  slope = (logsnr_fn(t + h) - logsnr_fn(t - h)) / (2 * h)
  want = -0.5 * slope * jnp.mean(jnp.square(eps), axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3)


def test_simple_weighting_is_plain_mse_on_the_target():
  logsnr_fn = schedules.linear(timesteps=500)
  x0, eps = _data()
  t = jnp.linspace(0.1, 0.9, 5)
  model = lambda x, t_, logsnr, context: x * 0.3
  got = losses.diffusion_loss(model_fn=model, x0=x0, t=t, eps=eps, context=None,
                              logsnr_fn=logsnr_fn,
                              prediction='eps', weighting='simple')
  x_t = gaussian.diffuse(x0=x0, eps=eps, logsnr=logsnr_fn(t))
  np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.mean((0.3 * x_t - eps) ** 2, axis=(1, 2, 3))),
                             rtol=1e-5)


def test_l1_gives_every_value_an_equal_share_of_l2s_gradient():
  """example_error's l1: value 2 mae^2, gradient 2 mae sign(d) / n per value, whose mean size is
  l2's; with a weighting, diffusion_loss is that weight times it."""
  out, goal = _data(1)
  n = out[0].size
  mae = np.mean(np.abs(np.asarray(out - goal)), axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(losses.example_error(out, goal, 'l1')), 2 * mae**2,
                             rtol=1e-5)
  def grad(norm):
    return np.asarray(jax.grad(lambda o: jnp.sum(losses.example_error(o, goal, norm)))(out))
  g1, g2 = grad('l1'), grad('l2')
  np.testing.assert_allclose(g1, 2 * mae[:, None, None, None] * np.sign(np.asarray(out - goal)) / n,
                             rtol=1e-5)
  np.testing.assert_allclose(np.mean(np.abs(g1), axis=(1, 2, 3)),
                             np.mean(np.abs(g2), axis=(1, 2, 3)), rtol=1e-5)
  assert not np.allclose(np.abs(g1), np.abs(g2))  # but shared out equally, not by the error
  x0, eps = _data()
  t = jnp.linspace(0.1, 0.9, 5)
  model = lambda x, t_, logsnr, context: x * 0.3
  kwargs = dict(model_fn=model, x0=x0, t=t, eps=eps, context=None, logsnr_fn=schedules.cosine(),
                prediction='v', weighting='min_snr')
  logsnr = schedules.cosine()(t)
  x_t = gaussian.diffuse(x0=x0, eps=eps, logsnr=logsnr)
  goal = gaussian.target(x0=x0, eps=eps, logsnr=logsnr, prediction='v')
  want = losses.loss_weight('min_snr', logsnr=logsnr, prediction='v') * losses.example_error(
      0.3 * x_t, goal, 'l1')
  np.testing.assert_allclose(np.asarray(losses.diffusion_loss(**kwargs, norm='l1')),
                             np.asarray(want), rtol=1e-5)
  with pytest.raises(ValueError, match='Unknown loss norm'):
    losses.example_error(out, goal, 'l3')


def test_l1_tv_charges_speckle_that_l1_does_not_see():
  """Two errors of the same size per value: a constant shift of a fill, and a checkerboard of
  the same amplitude (speckle). l1 prices them alike; l1_tv adds their total variation, zero for
  the shift and twice the amplitude for the checkerboard, so the shift keeps l1's value."""
  goal = jnp.zeros((1, 4, 4, 3))
  shift = jnp.full_like(goal, 0.1)
  rows, cols = jnp.meshgrid(jnp.arange(4), jnp.arange(4), indexing='ij')
  signs = jnp.where((rows + cols) % 2 == 0, 1.0, -1.0)[None, :, :, None]
  checker = 0.1 * signs * jnp.ones_like(goal)
  l1 = [float(losses.example_error(e, goal, 'l1')[0]) for e in (shift, checker)]
  tv = [float(losses.example_error(e, goal, 'l1_tv')[0]) for e in (shift, checker)]
  np.testing.assert_allclose(l1, [2 * 0.1**2] * 2, rtol=1e-5)
  w = losses.TV_WEIGHT
  np.testing.assert_allclose(tv[0], 2 * (0.1 / (1 + w))**2, rtol=1e-5)  # only the values count
  np.testing.assert_allclose(tv[1], 2 * ((0.1 + w * 0.2) / (1 + w))**2, rtol=1e-5)
  # A fill shifted by 0.1 but one pixel by 0.05: l1 moves that pixel towards the goal, l1_tv
  # towards its neighbours, which flattens the fill.
  dip = shift.at[0, 1, 1].set(0.05)
  grad = lambda norm: np.asarray(jax.grad(
      lambda o: jnp.sum(losses.example_error(o, goal, norm)))(dip))[0, 1, 1]
  assert np.all(grad('l1') > 0) and np.all(grad('l1_tv') < 0)


def test_self_conditioning_shows_every_other_example_its_own_clipped_estimate():
  """Rows 0, 2, .. get x0_hat from a pass with zeros (clipped, no gradient), rows 1, 3, .. zeros."""
  logsnr_fn = schedules.cosine()
  x0, eps = _data()
  t = jnp.linspace(0.1, 0.9, 5)
  context = jnp.eye(5)
  seen = []

  def model(x, t_, logsnr, context, x0_self, w=jnp.float32(3.0)):  # predicts x0 = w * x_in
    seen.append(x0_self)
    return w * x + 0 * context.sum() + x0_self
  x_t = gaussian.diffuse(x0=x0, eps=eps, logsnr=logsnr_fn(t))
  got = losses.self_cond_input(model_fn=model, x_in=x_t, x_t=x_t, t=t, logsnr=logsnr_fn(t),
                               context=context, prediction='x0')
  np.testing.assert_array_equal(np.asarray(seen[0]), 0.0)
  assert seen[0].shape[0] == 3  # only the rows that use it make the first pass
  np.testing.assert_allclose(np.asarray(got[::2]), np.clip(3.0 * np.asarray(x_t[::2]), -1, 1))
  np.testing.assert_array_equal(np.asarray(got[1::2]), 0.0)
  assert np.abs(np.asarray(got[::2])).max() == 1.0  # some were clipped

  def loss(w):
    return jnp.sum(losses.diffusion_loss(
        model_fn=lambda *a, **k: model(*a, **k, w=w), x0=x0, t=t, eps=eps, context=context,
        logsnr_fn=logsnr_fn, prediction='x0', weighting='simple', self_cond=True))
  # The gradient through the estimate is stopped: only the second pass's w * x_in counts.
  x_in_full = np.asarray(x_t)
  est = np.asarray(got)
  want = np.sum(2 * (3.0 * x_in_full + est - np.asarray(x0)) * x_in_full, axis=(1, 2, 3)) / x0[0].size
  np.testing.assert_allclose(float(jax.grad(loss)(jnp.float32(3.0))), want.sum(), rtol=1e-4)


def _cpu_preset_weights():
  return losses.level_weights(schedules.cosine(), 1000, prediction='v', weighting='min_snr',
                              min_snr_gamma=5.0)


def test_level_weights_are_the_loss_weights_on_the_training_grid():
  t = jnp.arange(1, 1001, dtype=jnp.float32) / 1000
  expected = losses.loss_weight('min_snr', logsnr=schedules.cosine()(t), prediction='v',
                                min_snr_gamma=5.0)
  np.testing.assert_allclose(np.asarray(_cpu_preset_weights()), np.asarray(expected), rtol=1e-6)
  flat = losses.level_weights(schedules.cosine(), 10, prediction='v', weighting='simple')
  np.testing.assert_array_equal(np.asarray(flat), np.ones(10))


def test_importance_levels_keep_the_expected_loss_and_even_out_the_weights():
  """Drawn where min-SNR weighs them, the levels' corrected weights average to the uniform
  draw's mean weight (the same expected loss), with far less spread (less gradient noise)."""
  w = _cpu_preset_weights()
  t, correction = losses.importance_levels(jax.random.key(0), w, 200_000, 0.9)
  i = np.round(np.asarray(t) * 1000).astype(int) - 1
  assert i.min() >= 0 and i.max() <= 999
  carried = np.asarray(w)[i] * np.asarray(correction)
  uniform = np.asarray(w)
  np.testing.assert_allclose(carried.mean(), uniform.mean(), rtol=0.01)
  assert carried.std() < 0.5 * uniform.std()
  # nearly-zero weight at logSNR < -2 (t > 0.78): a quarter of uniform draws, few here
  assert np.mean(np.asarray(t) > 0.78) < 0.06 < np.mean(uniform < 0.1)


def test_importance_share_0_or_a_flat_weighting_draws_uniformly_with_no_correction():
  for w, share in ((_cpu_preset_weights(), 0.0), (jnp.ones(1000), 0.9)):
    t, correction = losses.importance_levels(jax.random.key(1), w, 50_000, share)
    np.testing.assert_allclose(np.asarray(correction), 1.0, rtol=1e-5)
    counts = np.bincount((np.round(np.asarray(t) * 1000).astype(int) - 1) // 100, minlength=10)
    assert counts.min() > 4_500 and counts.max() < 5_500  # ~5,000 per tenth of the levels
