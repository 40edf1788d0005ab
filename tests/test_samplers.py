"""Samplers with exact denoisers: an oracle that knows x0, and Gaussian data with E[x0 | x_t] closed form."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import denoiser, samplers, schedules

ALL = sorted(samplers.SAMPLERS)
DETERMINISTIC = ['ddim', 'euler', 'heun', 'dpmpp_2m']


def _keys(n, seed=0):
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.arange(n))


def _run(denoise, logsnr_fn, n, shape, steps, **kwargs):
  grid = samplers.time_grid(logsnr_fn, steps)
  fn = jax.jit(lambda keys: samplers.sample(denoise=denoise, grid=grid, keys=keys, shape=shape,
                                            **kwargs))
  return np.asarray(fn(_keys(n)))


def oracle(target):
  def denoise(x_t, t, logsnr):  # scalars, as the samplers pass them
    del t
    alpha, sigma = schedules.alpha_sigma(logsnr)
    x0 = jnp.broadcast_to(target, x_t.shape)
    return x0, jnp.where(sigma > 0, (x_t - alpha * x0) / jnp.where(sigma > 0, sigma, 1), 0)
  return denoise


@pytest.mark.parametrize('sampler', ALL)
@pytest.mark.parametrize('steps', [1, 7, 50])
def test_oracle_denoiser_lands_exactly_on_x0(sampler, steps):
  """If x0_hat is always the true x0, every sampler must end at x0 (exactly: logSNR(0) = inf)."""
  logsnr_fn = schedules.linear(timesteps=500)
  target = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 4, 4, 3)), jnp.float32)
  out = _run(oracle(target), logsnr_fn, 5, (4, 4, 3), sampler=sampler, steps=steps,
             eta=1.0 if sampler == 'ddim' else 0.0)
  np.testing.assert_allclose(out, np.broadcast_to(np.asarray(target), out.shape), atol=1e-5)


# Gaussian data: x0 ~ N(MU, S^2) per pixel, so E[x0 | x_t] = MU + alpha S^2 (x_t - alpha MU) / (alpha^2 S^2 + sigma^2).
MU, S = 0.3, 0.5


def gaussian_denoiser():
  def denoise(x_t, t, logsnr):  # scalars, as the samplers pass them
    del t
    alpha, sigma = schedules.alpha_sigma(logsnr)
    x0 = MU + alpha * S**2 * (x_t - alpha * MU) / (alpha**2 * S**2 + sigma**2)
    eps = (x_t - alpha * MU) * sigma / (alpha**2 * S**2 + sigma**2)
    return x0, eps
  return denoise


def _moment_error(out):
  return abs(out.mean() - MU) + abs(out.std() - S)


@pytest.mark.parametrize('sampler', ALL)
def test_samples_converge_to_the_data_distribution(sampler):
  logsnr_fn = schedules.cosine()
  denoise = gaussian_denoiser()
  eta = 1.0 if sampler == 'ddim' else 0.0
  errors = {steps: _moment_error(_run(denoise, logsnr_fn, 4000, (4, 4, 1), sampler=sampler,
                                      steps=steps, eta=eta)) for steps in (2, 200)}
  assert errors[200] < 0.02, errors
  assert errors[200] <= errors[2] + 0.005, errors


@pytest.mark.parametrize('sampler', DETERMINISTIC)
@pytest.mark.parametrize('schedule', ['linear', 'cosine', 'edm'])
def test_deterministic_samplers_solve_the_probability_flow_ode(sampler, schedule):
  """For Gaussian data the PF-ODE keeps each pixel's z-score: x0 = MU + S (x1 - a1 MU) / sqrt(a1^2 S^2 + s1^2)."""
  logsnr_fn = schedules.get(schedule)(**({'timesteps': 1000} if schedule == 'linear' else {}))
  steps = {'heun': 500, 'dpmpp_2m': 500}.get(sampler, 4000)  # 2nd order vs 1st order
  out = _run(gaussian_denoiser(), logsnr_fn, 64, (2, 2, 1), sampler=sampler, steps=steps)
  x1 = np.asarray(samplers.initial_noise(_keys(64), (2, 2, 1)))
  a1, s1 = (float(v) for v in schedules.alpha_sigma(logsnr_fn(jnp.float32(1.0))))
  want = MU + S * (x1 - a1 * MU) / np.sqrt(a1**2 * S**2 + s1**2)
  # sigma(t=0) of edm is 0.002, so its last x keeps that much noise.
  np.testing.assert_allclose(out, want, atol=5e-3 if schedule == 'edm' else 2e-3)


@pytest.mark.parametrize('sampler', ['heun', 'dpmpp_2m'])
def test_second_order_samplers_converge_faster_than_euler(sampler):
  """On EDM's schedule: error / 4 per doubling of steps (2nd order) against Euler's / 2."""
  logsnr_fn = schedules.edm()  # EDM's own setting: every Heun step but the last corrected
  denoise = gaussian_denoiser()
  x1 = np.asarray(samplers.initial_noise(_keys(64), (2, 2, 1)))
  (a1, s1), (a0, s0) = ((float(v) for v in schedules.alpha_sigma(logsnr_fn(jnp.float32(t))))
                        for t in (1.0, 0.0))
  z = (x1 - a1 * MU) / np.sqrt(a1**2 * S**2 + s1**2)
  want = a0 * MU + np.sqrt(a0**2 * S**2 + s0**2) * z  # the ODE's x at t = 0 (sigma_min)
  err = {(name, steps): np.abs(_run(denoise, logsnr_fn, 64, (2, 2, 1), sampler=name,
                                    steps=steps) - want).max()
         for name in ('euler', sampler) for steps in (32, 64)}
  assert err[sampler, 32] < 0.3 * err['euler', 32], err
  assert err[sampler, 64] < 0.35 * err[sampler, 32], err


def test_euler_is_ddim_with_eta_zero():
  logsnr_fn = schedules.linear(timesteps=500)
  denoise = gaussian_denoiser()
  a = _run(denoise, logsnr_fn, 8, (2, 2, 1), sampler='euler', steps=13)
  b = _run(denoise, logsnr_fn, 8, (2, 2, 1), sampler='ddim', steps=13, eta=0.0)
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('sampler', ALL)
def test_zero_terminal_snr_start_stays_finite(sampler):
  logsnr_fn = schedules.rescale_zero_terminal_snr(schedules.linear(timesteps=500))
  out = _run(gaussian_denoiser(), logsnr_fn, 256, (2, 2, 1), sampler=sampler, steps=50,
             eta=1.0 if sampler == 'ddim' else 0.0)
  assert np.all(np.isfinite(out))
  assert _moment_error(out) < 0.1


def test_sprite_i_is_the_same_at_any_batch_size():
  logsnr_fn = schedules.linear(timesteps=500)
  denoise = gaussian_denoiser()
  big = _run(denoise, logsnr_fn, 8, (3, 3, 1), sampler='ddpm', steps=20)
  small = _run(denoise, logsnr_fn, 3, (3, 3, 1), sampler='ddpm', steps=20)
  np.testing.assert_allclose(big[:3], small, atol=1e-6)


def test_movie_frames_start_from_noise_and_end_near_the_result():
  logsnr_fn = schedules.cosine()
  grid = samplers.time_grid(logsnr_fn, 10)
  fn = jax.jit(lambda keys: samplers.sample(denoise=gaussian_denoiser(), grid=grid,
                                            keys=keys, shape=(2, 2, 1), sampler='ddim', frames=4))
  x, movie = fn(_keys(6))
  xs, x0s = movie.x_t, movie.x0
  assert xs.shape == x0s.shape == (4, 6, 2, 2, 1)
  np.testing.assert_array_equal(np.asarray(movie.step), [0, 3, 6, 9])  # 4 of 10, spread evenly
  np.testing.assert_allclose(np.asarray(movie.t), np.asarray(grid[0])[[0, 3, 6, 9]])
  np.testing.assert_allclose(np.asarray(xs[0]),
                             np.asarray(samplers.initial_noise(_keys(6), (2, 2, 1))), atol=1e-6)
  np.testing.assert_allclose(np.asarray(x0s[-1]), np.asarray(x), atol=0.05)


@pytest.mark.parametrize('schedule', ['cosine', 'linear'])
def test_grid_with_logsnr_end_jumps_to_x0_from_that_level(schedule):
  """The same number of steps; the last from logsnr_end straight to t = 0, the rest above it."""
  logsnr_fn = {'cosine': schedules.cosine(), 'linear': schedules.linear(timesteps=500)}[schedule]
  ts, logsnrs = (np.asarray(a) for a in samplers.time_grid(logsnr_fn, 12, logsnr_end=4.0))
  assert ts.shape == logsnrs.shape == (13,)
  assert ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
  np.testing.assert_allclose(logsnrs[-2], 4.0, atol=1e-3)
  assert np.all(logsnrs[:-2] < 4.0)
  np.testing.assert_allclose(np.diff(ts[:-1]), np.diff(ts[:-1])[0], rtol=1e-4)  # even in t above
  full = np.asarray(samplers.time_grid(logsnr_fn, 12)[0])
  np.testing.assert_array_equal(np.asarray(samplers.time_grid(logsnr_fn, 12, np.inf)[0]), full)
  target = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 4, 4, 3)), jnp.float32)
  grid = samplers.time_grid(logsnr_fn, 12, logsnr_end=4.0)
  for sampler in ALL if schedule == 'cosine' else []:  # an exact x0_hat still lands on x0
    x = jax.jit(lambda keys, s=sampler: samplers.sample(
        denoise=oracle(target), grid=grid, keys=keys, shape=(4, 4, 3), sampler=s))(_keys(2))
    np.testing.assert_allclose(np.asarray(x), np.broadcast_to(target, x.shape), atol=1e-5)


def test_logsnr_grid_spaces_the_inner_steps_evenly_in_logsnr():
  """t = 1 first and t = 0 last, as sampling runs; between, logSNR climbs lo..hi in even steps,
  and an exact x0_hat still lands on x0 whatever the sampler."""
  logsnr_fn = schedules.cosine()
  grid = samplers.time_grid(logsnr_fn, 9, logsnr_span=(-6.0, 6.0))
  ts, logsnrs = (np.asarray(a) for a in grid)
  assert ts.shape == (10,) and ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
  np.testing.assert_allclose(logsnrs[1:-1], np.linspace(-6, 6, 8), atol=1e-3)
  target = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 4, 4, 3)), jnp.float32)
  for sampler in ALL:
    x = jax.jit(lambda keys, s=sampler: samplers.sample(
        denoise=oracle(target), grid=grid, keys=keys, shape=(4, 4, 3), sampler=s))(_keys(2))
    np.testing.assert_allclose(np.asarray(x), np.broadcast_to(target, x.shape), atol=1e-5)


def test_grid_with_logsnr_start_begins_at_that_level_and_spreads_evenly_from_there():
  """The first network call at logsnr_start instead of t = 1, the rest as before from there (with
  logsnr_end and logsnr_span too); at or below the schedule's own start it changes nothing."""
  logsnr_fn = schedules.cosine()  # logSNR -20 at t = 1
  ts, logsnrs = (np.asarray(a) for a in samplers.time_grid(logsnr_fn, 12, logsnr_start=-8.0))
  assert ts.shape == (13,) and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
  np.testing.assert_allclose(logsnrs[0], -8.0, atol=1e-3)
  np.testing.assert_allclose(np.diff(ts), np.diff(ts)[0], rtol=1e-4)
  full = np.asarray(samplers.time_grid(logsnr_fn, 12)[0])
  for same in (-np.inf, -20.0, -25.0):
    np.testing.assert_array_equal(np.asarray(samplers.time_grid(logsnr_fn, 12, logsnr_start=same)[0]), full)
  ends = np.asarray(samplers.time_grid(logsnr_fn, 12, logsnr_end=4.0, logsnr_start=-8.0)[1])
  np.testing.assert_allclose(ends[[0, -2]], [-8.0, 4.0], atol=1e-3)
  span = np.asarray(samplers.time_grid(logsnr_fn, 9, logsnr_span=(-6.0, 6.0), logsnr_start=-8.0)[1])
  np.testing.assert_allclose(span[:-1], np.concatenate([[-8.0], np.linspace(-6, 6, 8)]), atol=1e-3)
  target = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (1, 4, 4, 3)), jnp.float32)
  grid = samplers.time_grid(logsnr_fn, 12, logsnr_start=-8.0)
  for sampler in ALL:  # an exact x0_hat still lands on x0 from a start with signal left out
    x = jax.jit(lambda keys, s=sampler: samplers.sample(
        denoise=oracle(target), grid=grid, keys=keys, shape=(4, 4, 3), sampler=s))(_keys(2))
    np.testing.assert_allclose(np.asarray(x), np.broadcast_to(target, x.shape), atol=1e-5)


@pytest.mark.parametrize('sampler', ['ddpm', 'heun', 'dpmpp_2m'])  # noise, a corrector, a history
def test_self_conditioning_hands_each_step_the_previous_estimate(sampler):
  """A denoiser that answers x0_prev + 1 counts its calls when fed its own last answer."""
  def counting(x_t, t, logsnr, x0_prev=None):
    x0 = (0.0 if x0_prev is None else x0_prev) + jnp.ones_like(x_t)
    return x0, gaussian_eps(x_t, x0, logsnr)
  grid = samplers.time_grid(schedules.cosine(), 6)
  run = lambda self_cond: np.asarray(jax.jit(lambda keys: samplers.sample(
      denoise=counting, grid=grid, keys=keys, shape=(2, 2, 1), sampler=sampler,
      self_cond=self_cond))(_keys(2)))
  np.testing.assert_allclose(run(False), 1.0, atol=1e-5)
  # 6 steps: 6 answers, each one more than the last (Heun's corrector sees its predictor's x0_prev).
  np.testing.assert_allclose(run(True), 6.0, atol=1e-4)


def gaussian_eps(x_t, x0, logsnr):
  alpha, sigma = schedules.alpha_sigma(logsnr)
  return jnp.where(sigma > 0, (x_t - alpha * x0) / jnp.where(sigma > 0, sigma, 1), 0)


def test_guidance_combines_conditional_and_null_outputs():
  """With w, the output is (1 + w) f(c) - w f(0): checked on a model linear in the context."""
  def model_fn(x, t, logsnr, c):
    return x * 0 + c.sum(axis=1)[:, None, None, None] + 0.1
  logsnr_fn = schedules.cosine()
  ctx = jnp.array([[1.0, 0.0], [0.4, 0.6]])
  x_t, t = jnp.zeros((2, 2, 2, 1)), jnp.full((2,), 0.5)
  plain = denoiser.make_denoiser(model_fn=model_fn, context=ctx, prediction='x0', threshold='none')
  guided = denoiser.make_denoiser(model_fn=model_fn, context=ctx, prediction='x0', guidance=2.0,
                                  threshold='none')
  logsnr = logsnr_fn(t)
  np.testing.assert_allclose(np.asarray(plain(x_t, t, logsnr)[0]), 1.1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(guided(x_t, t, logsnr)[0]), 3 * 1.1 - 2 * 0.1, atol=1e-6)


def test_autoguidance_steps_away_from_the_guide_and_combines_with_cfg():
  """(1 + a) f - a f_guide, both called with the same inputs and context; CFG then mixes those
  combined outputs for the context and the null context."""
  def model_fn(x, t, logsnr, c):
    return x * 0 + c.sum(axis=1)[:, None, None, None] + 0.1
  def guide_fn(x, t, logsnr, c):
    return x * 0 + 0.5 * c.sum(axis=1)[:, None, None, None]
  ctx = jnp.array([[1.0, 0.0], [0.4, 0.6]])
  x_t, t = jnp.zeros((2, 2, 2, 1)), jnp.full((2,), 0.5)
  logsnr = schedules.cosine()(t)
  for weight, guidance in ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0)):
    fn = denoiser.autoguided(model_fn, guide_fn, weight)
    guided = denoiser.make_denoiser(model_fn=fn, context=ctx, prediction='x0', guidance=guidance,
                                    threshold='none')
    combined = lambda c: (1 + weight) * (c + 0.1) - weight * 0.5 * c  # c: the context's sum
    expected = (1 + guidance) * combined(1.0) - guidance * combined(0.0)
    np.testing.assert_allclose(np.asarray(guided(x_t, t, logsnr)[0]), expected, atol=1e-6)


def test_guidance_applies_only_inside_its_logsnr_interval():
  """guidance_logsnr=(lo, hi): guided where lo <= logsnr <= hi, plain conditional elsewhere (then
  with one network call per sprite, not two); per sprite when the batch mixes noise levels."""
  calls = []

  def model_fn(x, t, logsnr, c):
    calls.append(x.shape[0])
    return x * 0 + c.sum(axis=1)[:, None, None, None] + 0.1
  ctx = jnp.array([[1.0, 0.0], [0.4, 0.6]])
  x_t, t = jnp.zeros((2, 2, 2, 1)), jnp.full((2,), 0.5)
  guided = denoiser.make_denoiser(model_fn=model_fn, context=ctx, prediction='x0', guidance=2.0,
                                  guidance_logsnr=(-1.0, 2.0), threshold='none')
  out = lambda logsnr: np.asarray(guided(x_t, t, jnp.asarray(logsnr, jnp.float32))[0][:, 0, 0, 0])
  np.testing.assert_allclose(out([0.0, 2.0]), 3 * 1.1 - 2 * 0.1, atol=1e-6)
  np.testing.assert_allclose(out([-3.0, 5.0]), 1.1, atol=1e-6)
  np.testing.assert_allclose(out([0.5, -1.5]), [3 * 1.1 - 2 * 0.1, 1.1], atol=1e-6)
  calls.clear()
  jax.make_jaxpr(lambda l: guided(x_t, t, l))(jnp.zeros(2))
  assert sorted(calls) == [2, 4]  # the plain branch runs the batch once, the guided one twice


def test_dynamic_thresholding_keeps_samples_in_range():
  x0 = jnp.stack([jnp.linspace(-3, 3, 48).reshape(4, 4, 3), jnp.linspace(-0.5, 0.5, 48).reshape(4, 4, 3)])
  out = np.asarray(denoiser.threshold_x0(x0, 'dynamic', 0.9))
  assert np.abs(out).max() <= 1.0 + 1e-6
  np.testing.assert_allclose(out[1], np.asarray(x0[1]), atol=1e-6)  # within range: untouched


# Every schedule with its defaults, and the zero-terminal-SNR rescale of the course's linear one.
SCHEDULE_FNS = {name: schedules.get(name)(**({'timesteps': 1000} if 'linear' in name else {}))
                for name in schedules.SCHEDULES}
SCHEDULE_FNS['linear_zero_terminal_snr'] = schedules.rescale_zero_terminal_snr(
    SCHEDULE_FNS['linear'])


@functools.partial(jax.jit, static_argnames='sampler')
def _solve(ts, logsnrs, x1_keys, sampler):
  """One compile per (sampler, steps): the grid is an argument, so schedules share it."""
  return samplers.sample(denoise=gaussian_denoiser(), grid=(ts, logsnrs), keys=x1_keys,
                         shape=(1, 1, 1), sampler=sampler)


def _pf_ode_error(logsnr_fn, sampler, steps, t_start=1.0, t_end=0.0):
  """Max |x - exact| over 16 sprites, where exact is the PF-ODE's x at t_end from x at t_start.

  The ODE keeps each pixel's z = (x_t - a_t MU) / sqrt(a_t^2 S^2 + s_t^2), so its end point is
  a MU + sqrt(a^2 S^2 + s^2) z at t_end: closed form also where logSNR(t_end) is finite.
  """
  keys = _keys(16)
  ts = jnp.linspace(t_start, t_end, steps + 1)
  x = np.asarray(_solve(ts, logsnr_fn(ts), keys, sampler))
  x1 = np.asarray(samplers.initial_noise(keys, (1, 1, 1)))
  (a1, s1), (a0, s0) = (np.asarray(schedules.alpha_sigma(logsnr_fn(ts[i])), np.float64)
                        for i in (0, -1))
  z = (x1 - a1 * MU) / np.sqrt(a1**2 * S**2 + s1**2)
  return np.abs(x - (a0 * MU + np.sqrt(a0**2 * S**2 + s0**2) * z)).max()


ORDER = {'ddim': 1, 'euler': 1, 'heun': 2, 'dpmpp_2m': 2}


@pytest.mark.parametrize('schedule', sorted(SCHEDULE_FNS))
def test_solvers_converge_at_their_order_on_every_schedule(schedule):
  """Order = log2 of the error ratio per doubling of steps, averaged over 16 -> 256 steps.

  Measured on t in [0.05, 0.95], where every schedule's logSNR is finite and smooth in t, so
  the step sizes in logSNR shrink like 1/N. (On the full grid the end points decide instead:
  see the next test.) Float64, so rounding does not hide the small errors at 256 steps.
  """
  with jax.enable_x64(True):
    for sampler, order in ORDER.items():
      errors = [_pf_ode_error(SCHEDULE_FNS[schedule], sampler, n, 0.95, 0.05) for n in (16, 256)]
      measured = np.log2(errors[0] / errors[1]) / 4
      assert order - 0.2 <= measured <= order + 1, (sampler, errors, measured)


@pytest.mark.parametrize('schedule', sorted(SCHEDULE_FNS))
def test_full_grids_converge_and_second_order_beats_ddim(schedule):
  """From t = 1 to t = 0 as sampling runs: every sampler converges (error / 4 or better from 16
  to 256 steps; the end points limit the order: the last jump to sigma = 0 costs
  O(sigma^2(1/N)), which is O(1/N) where sigma^2 grows like t, as for the beta tables), and
  DPM-Solver++(2M) and Heun beat DDIM at 10 and 20 steps, which DPM-Solver++'s 2nd-order last
  step on grids ending at a finite logSNR did not (shifted_cosine, 10 steps: 1.05 away against
  DDIM's 0.17), nor Heun's correction of a first step from sigma_ve ~ 2e4 (cosine, 10 steps:
  12 away).
  """
  logsnr_fn = SCHEDULE_FNS[schedule]
  with jax.enable_x64(True):
    for sampler in ORDER:
      few, many = (_pf_ode_error(logsnr_fn, sampler, n) for n in (16, 256))
      assert many <= few / 4, (sampler, few, many)
    for steps in (10, 20):
      ddim = _pf_ode_error(logsnr_fn, 'ddim', steps)
      for sampler in ('dpmpp_2m', 'heun'):
        error = _pf_ode_error(logsnr_fn, sampler, steps)
        assert error < ddim, (sampler, steps, error, ddim)


def test_dpmpp_2m_takes_a_first_order_last_step_on_finite_logsnr_grids():
  """Issue 14's figures, float32: 10 / 20 steps on shifted_cosine land 1.05 / 0.38 (max over 64
  sprites) from the exact PF-ODE end with a 2nd-order last step, 0.061 / 0.005 with a 1st."""
  logsnr_fn = schedules.shifted_cosine()
  x1 = np.asarray(samplers.initial_noise(_keys(64), (2, 2, 1)))
  (a1, s1), (a0, s0) = ((float(v) for v in schedules.alpha_sigma(logsnr_fn(jnp.float32(t))))
                        for t in (1.0, 0.0))
  want = a0 * MU + np.sqrt(a0**2 * S**2 + s0**2) * (x1 - a1 * MU) / np.sqrt(a1**2 * S**2 + s1**2)
  for steps, bound in ((10, 0.1), (20, 0.01)):
    out = _run(gaussian_denoiser(), logsnr_fn, 64, (2, 2, 1), steps, sampler='dpmpp_2m')
    assert np.abs(out - want).max() < bound, steps


def _refine(denoise, x0, draws, n_keys=None, **kwargs):
  keys = _keys(n_keys or x0.shape[0])
  return np.asarray(jax.jit(lambda x, k: samplers.refine(denoise, x, k, t=0.1, logsnr=2.0,
                                                         draws=draws, **kwargs))(x0, keys))


def test_refine_averages_away_the_error_that_follows_the_noise():
  """The do-nothing denoiser (x0_hat = x_t / alpha) errs by (sigma / alpha) eps in every draw:
  the mean over K draws keeps x0 and 1 / K of that error's variance, exp(-logsnr)."""
  def do_nothing(x_t, t, logsnr):
    del t
    alpha, _ = schedules.alpha_sigma(logsnr)
    return x_t / alpha, None
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 3)), jnp.float32)
  for draws in (1, 16):
    err = _refine(do_nothing, x0, draws) - np.asarray(x0)
    assert abs(err.mean()) < 0.02, draws
    np.testing.assert_allclose(err.var() * draws / np.exp(-2.0), 1.0, rtol=0.1)


def test_refine_keeps_what_the_denoiser_knows_and_draws_per_sprite():
  target = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 4, 4, 3)), jnp.float32)
  x0 = jnp.zeros((5, 4, 4, 3))
  np.testing.assert_allclose(_refine(oracle(target), x0, 4), np.broadcast_to(target, x0.shape),
                             atol=1e-6)
  denoise = gaussian_denoiser()
  x0 = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3, 3, 1)), jnp.float32)
  np.testing.assert_allclose(_refine(denoise, x0[:2], 3), _refine(denoise, x0, 3)[:2], atol=1e-6)
  assert not np.allclose(_refine(denoise, x0, 1), _refine(denoise, x0, 2))


def test_refine_hands_a_self_conditioned_network_its_own_first_estimate_not_the_sprite():
  """x0_prev + 1 answers 1 to zeros, then 1 + 1 to its own (clipped) first answer, whatever x0."""
  def plus_one(x_t, t, logsnr, x0_prev=None):
    del t, logsnr
    return x0_prev + 1.0, jnp.zeros_like(x_t)
  x0 = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (3, 2, 2, 3)), jnp.float32)
  np.testing.assert_allclose(_refine(plus_one, x0, 2, self_cond=True), 2.0, atol=1e-6)


def test_refine_draws_noise_the_sampler_never_used():
  """Read back through the do-nothing denoiser, the refining noise is neither a sprite's
  starting noise nor any step's (a reused stream would correlate the pass with the sampler)."""
  def do_nothing(x_t, t, logsnr):
    del t
    alpha, _ = schedules.alpha_sigma(logsnr)
    return x_t / alpha, None
  keys, shape = _keys(4), (8, 8, 3)
  alpha, sigma = (float(v) for v in schedules.alpha_sigma(jnp.float32(2.0)))
  eps = (_refine(do_nothing, jnp.zeros((4,) + shape), 1) * alpha / sigma).reshape(4, -1)
  used = [samplers.initial_noise(keys, shape)] + [
      samplers._step_noise(keys, jnp.asarray(i), shape) for i in range(50)]  # pylint: disable=protected-access
  for noise in used:
    corr = np.sum(eps * np.asarray(noise).reshape(4, -1), 1) / (
        np.linalg.norm(eps, axis=1) * np.linalg.norm(np.asarray(noise).reshape(4, -1), axis=1))
    assert np.all(np.abs(corr) < 0.5), corr
  assert abs(np.std(eps) - 1.0) < 0.15  # and it is standard normal noise
