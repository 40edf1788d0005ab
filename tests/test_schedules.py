"""Every schedule against a float64 numpy reference; q(x_t | x0) against its formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import gaussian, schedules

T = 500


def _logit(ab):
  with np.errstate(divide='ignore'):
    return np.log(ab) - np.log1p(-ab)


def ref_betas(betas):
  ab = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
  return _logit(ab)  # at t = i / T, i = 0..T


def ref_cosine(t, s=0.008):
  f = lambda u: np.cos(0.5 * np.pi * (u + s) / (1 + s)) ** 2
  return np.maximum(_logit(f(t) / f(0.0)), -20.0)


def ref_sigmoid(t, start=-3.0, end=3.0, tau=1.0):
  sig = lambda z: 1 / (1 + np.exp(-z))
  v_start, v_end = sig(start / tau), sig(end / tau)
  ab = np.clip((v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start), 1e-9, 1.0)
  return _logit(ab)


def ref_edm(t, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  sigma = (sigma_min ** (1 / rho) + t * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho
  return -2 * np.log(sigma)


def ref_cosine_logsnr(t, shift=0.0, shift_t0=None):
  a0, a1 = np.arctan(np.exp(-10.0)), np.arctan(np.exp(10.0))
  base = -2 * np.log(np.tan(a0 + t * (a1 - a0)))
  if shift_t0 is None:
    return base + shift
  return base + t * shift + (1 - t) * shift_t0


GRID = np.arange(T + 1) / T
CASES = {
    'linear': (schedules.linear(timesteps=T), ref_betas(np.linspace(1e-4, 0.02, T))),
    'scaled_linear': (schedules.scaled_linear(timesteps=T),
                      ref_betas(np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2)),
    'cosine': (schedules.cosine(), ref_cosine(GRID)),
    'sigmoid': (schedules.sigmoid(), ref_sigmoid(GRID)),
    'edm': (schedules.edm(), ref_edm(GRID)),
    'shifted_cosine': (schedules.shifted_cosine(shift=1.5), ref_cosine_logsnr(GRID, 1.5)),
    'interpolated_cosine': (schedules.interpolated_cosine(shift=-2.0, shift_t0=1.0),
                            ref_cosine_logsnr(GRID, -2.0, 1.0)),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_schedule_matches_float64_reference(name):
  fn, ref = CASES[name]
  got = np.asarray(schedules.discretize(fn, T), np.float64)
  finite = np.isfinite(ref)
  np.testing.assert_array_equal(np.isfinite(got), finite)
  # Compare alpha_bar (what the process uses) and logSNR where it is moderate.
  np.testing.assert_allclose(1 / (1 + np.exp(-got[finite])), 1 / (1 + np.exp(-ref[finite])),
                             rtol=2e-5, atol=2e-7)
  moderate = finite & (np.abs(ref) < 15)
  np.testing.assert_allclose(got[moderate], ref[moderate], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize('name', sorted(schedules.SCHEDULES))
@pytest.mark.parametrize('ztsnr', [False, True])
def test_alpha_bar_is_monotone_and_spans_the_range(name, ztsnr):
  # Stable Diffusion's scaled_linear reaches alpha_bar < 0.01 only with its own T = 1000.
  fn = schedules.get(name)(**({'timesteps': 1000} if name in ('linear', 'scaled_linear') else {}))
  if ztsnr:
    fn = schedules.rescale_zero_terminal_snr(fn)
  ab = np.asarray(jax.nn.sigmoid(fn(jnp.linspace(0.0, 1.0, 2001))))
  assert np.all(np.diff(ab) <= 1e-7), 'alpha_bar must not increase with t'
  assert ab[0] > 0.999 and ab[-1] < 0.01
  if ztsnr:
    assert ab[-1] == 0.0 and np.isneginf(fn(jnp.float32(1.0)))


def test_zero_terminal_snr_rescale_matches_lin_et_al():
  """Lin et al. 2024, Algorithm 1, on the discrete table of the course's schedule."""
  ref = 1 / (1 + np.exp(-ref_betas(np.linspace(1e-4, 0.02, T))))
  root = np.sqrt(ref)
  root = (root - root[-1]) * root[0] / (root[0] - root[-1])
  got = jax.nn.sigmoid(schedules.discretize(
      schedules.rescale_zero_terminal_snr(schedules.linear(timesteps=T)), T))
  np.testing.assert_allclose(np.asarray(got), root**2, rtol=1e-5, atol=1e-7)


def test_course_schedule_ends_at_nonzero_snr():
  ab = jax.nn.sigmoid(schedules.discretize(schedules.linear(timesteps=T), T))
  assert float(ab[0]) == 1.0
  np.testing.assert_allclose(float(ab[-1]), 0.0064, atol=2e-4)  # the course's ~0.0063


def test_unknown_schedule_lists_the_valid_ones():
  with pytest.raises(ValueError, match="Unknown schedule 'cosinus'; valid: linear, .*, cosine"):
    schedules.get('cosinus')


def test_q_xt_given_x0_matches_formula():
  """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: with the square root the course's code lacks."""
  rng = np.random.default_rng(0)
  x0, eps = rng.uniform(-1, 1, (6, 4, 4, 3)), rng.normal(size=(6, 4, 4, 3))
  idx = np.array([1, 50, 100, 250, 400, 500])
  fn = schedules.linear(timesteps=T)
  ab = 1 / (1 + np.exp(-ref_betas(np.linspace(1e-4, 0.02, T))[idx]))
  want = np.sqrt(ab)[:, None, None, None] * x0 + np.sqrt(1 - ab)[:, None, None, None] * eps
  got = gaussian.diffuse(x0=jnp.asarray(x0, jnp.float32), eps=jnp.asarray(eps, jnp.float32),
                         logsnr=fn(jnp.asarray(idx / T, jnp.float32)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_q_xt_has_the_right_moments():
  """Monte Carlo: E[x_t] = alpha x0 and Var[x_t] = sigma^2, at a few noise levels."""
  logsnr = jnp.array([3.0, 0.0, -3.0])
  x0 = jnp.full((3, 1, 1, 1), 0.5)
  eps = jax.random.normal(jax.random.key(0), (3, 20_000, 1, 1))
  x_t = gaussian.diffuse(x0=x0 * jnp.ones_like(eps), eps=eps, logsnr=logsnr)
  alpha, sigma = np.sqrt(1 / (1 + np.exp(-np.array([3.0, 0.0, -3.0])))), None
  sigma = np.sqrt(1 - alpha**2)
  np.testing.assert_allclose(np.asarray(x_t.mean(axis=(1, 2, 3))), 0.5 * alpha, atol=0.02)
  np.testing.assert_allclose(np.asarray(x_t.std(axis=(1, 2, 3))), sigma, rtol=0.03)
