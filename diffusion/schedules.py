"""Noise schedules as logSNR(t) on continuous time t in [0, 1].

A schedule is a pure function `logsnr(t)`: x_t = alpha(t) x0 + sigma(t) eps with
alpha^2 = sigmoid(logsnr) (= alpha_bar in DDPM notation) and sigma^2 = sigmoid(-logsnr).
t = 0 is clean data, t = 1 the noisiest level. Every sampler takes any schedule, so an
ablation changes one name. Training with T timesteps uses t in {1/T, ..., T/T}
(`discretize`); samplers may evaluate any t.

Schedules built from a table of betas (DDPM's linear, Stable Diffusion's scaled linear)
interpolate log(alpha_bar) linearly between the T grid points: exact on the grid, and
the natural continuous extension (log alpha_bar is the integral of the beta rate).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import registry

LogSNR = Callable[[jax.Array], jax.Array]

# Floor for schedules whose logSNR diverges at t = 1. sigmoid(-20) ~ 2e-9 = alpha_bar,
# the same as Nichol & Dhariwal's beta <= 0.999 clip for cosine at T = 1000.
LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def logsnr_from_log_alpha_bar(log_ab: jax.Array) -> jax.Array:
  """logSNR = log(ab / (1 - ab)), written so that ab = 1 gives +inf, not nan."""
  return log_ab - jnp.log(-jnp.expm1(log_ab))


def _from_betas(betas: np.ndarray) -> LogSNR:
  timesteps = len(betas)
  log_ab = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])  # float64, t = 0..T
  grid = jnp.linspace(0.0, 1.0, timesteps + 1)
  log_ab = jnp.asarray(log_ab, jnp.float32)

  def logsnr(t):
    return logsnr_from_log_alpha_bar(jnp.interp(t, grid, log_ab))
  return logsnr


def linear(*, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> LogSNR:
  """DDPM (Ho et al. 2020) and the course: betas linear in the step index."""
  return _from_betas(np.linspace(beta_start, beta_end, timesteps, dtype=np.float64))


def scaled_linear(*, timesteps: int, beta_start: float = 0.00085,
                  beta_end: float = 0.012) -> LogSNR:
  """Stable Diffusion's: sqrt(beta) linear in the step index."""
  root = np.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=np.float64)
  return _from_betas(root**2)


def cosine(*, cosine_s: float = 0.008) -> LogSNR:
  """Nichol & Dhariwal 2021: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t+s)/(1+s))."""
  def logsnr(t):
    c = 0.5 * jnp.pi / (1 + cosine_s)
    # log(f(t) / (f(0) - f(t))) with f(0) - f(t) = sin(u - u0) sin(u + u0), u = c (t + s):
    # u - u0 = c t is written out so that t = 0 gives exactly +inf.
    value = (2 * jnp.log(jnp.abs(jnp.cos(c * (t + cosine_s))))
             - jnp.log(jnp.sin(c * t) * jnp.sin(c * (t + 2 * cosine_s))))
    return jnp.maximum(value, LOGSNR_MIN)
  return logsnr


def sigmoid(*, sigmoid_start: float = -3.0, sigmoid_end: float = 3.0,
            sigmoid_tau: float = 1.0) -> LogSNR:
  """Chen 2023 ("On the importance of noise scheduling"), alpha_bar clipped at 1e-9."""
  v_start = jax.nn.sigmoid(sigmoid_start / sigmoid_tau)
  v_end = jax.nn.sigmoid(sigmoid_end / sigmoid_tau)

  def logsnr(t):
    v = jax.nn.sigmoid((t * (sigmoid_end - sigmoid_start) + sigmoid_start) / sigmoid_tau)
    ab = jnp.clip((v_end - v) / (v_end - v_start), 1e-9, 1.0)
    return jnp.log(ab) - jnp.log1p(-ab)
  return logsnr


def edm(*, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> LogSNR:
  """Karras et al. 2022: sigma = sigma_ve, spaced uniformly in sigma^(1/rho); logSNR = -2 log sigma.

  Uniform steps in t give exactly EDM's time discretization.
  """
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)

  def logsnr(t):
    return -2 * rho * jnp.log(lo + t * (hi - lo))
  return logsnr


def _cosine_logsnr(t):
  """-2 log tan(pi t / 2), its range mapped onto [LOGSNR_MIN, LOGSNR_MAX]."""
  a0 = jnp.arctan(jnp.exp(-0.5 * LOGSNR_MAX))
  a1 = jnp.arctan(jnp.exp(-0.5 * LOGSNR_MIN))
  return -2 * jnp.log(jnp.tan(a0 + t * (a1 - a0)))


def shifted_cosine(*, shift: float = 0.0) -> LogSNR:
  """Hoogeboom et al. 2023 (simple diffusion): cosine logSNR + shift; shift = 2 log(64 / res)."""
  return lambda t: _cosine_logsnr(t) + shift


def interpolated_cosine(*, shift: float = 0.0, shift_t0: float = 0.0) -> LogSNR:
  """Hoogeboom et al. 2023: the shift blends linearly from shift_t0 (t=0) to shift (t=1)."""
  return lambda t: _cosine_logsnr(t) + t * shift + (1 - t) * shift_t0


def rescale_zero_terminal_snr(logsnr_fn: LogSNR) -> LogSNR:
  """Lin et al. 2024: shift and scale sqrt(alpha_bar) so that it is 0 at t=1, unchanged at t=0."""
  root = lambda t: jnp.sqrt(jax.nn.sigmoid(logsnr_fn(t)))

  def logsnr(t):
    # The ends in t's own dtype: under jax_enable_x64 a float32 root1 would leave r at t = 1 a
    # rounding error below 0 (log -> nan) instead of exactly 0.
    t = jnp.asarray(t)
    root0, root1 = root(jnp.zeros((), t.dtype)), root(jnp.ones((), t.dtype))
    r = (root(t) - root1) * root0 / (root0 - root1)
    return 2 * jnp.log(r) - jnp.log1p(-r * r)
  return logsnr


SCHEDULES = {
    'linear': linear,
    'scaled_linear': scaled_linear,
    'cosine': cosine,
    'sigmoid': sigmoid,
    'edm': edm,
    'shifted_cosine': shifted_cosine,
    'interpolated_cosine': interpolated_cosine,
}


def get(name: str) -> Callable[..., LogSNR]:
  """The constructor of schedule `name`; unknown names list the valid ones."""
  return registry.lookup(SCHEDULES, name, 'schedule')


def discretize(logsnr_fn: LogSNR, timesteps: int) -> jax.Array:
  """logSNR at t = i / T for i = 0..T (index i is the course's timestep i)."""
  return logsnr_fn(jnp.linspace(0.0, 1.0, timesteps + 1))


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(alpha, sigma) with alpha^2 + sigma^2 = 1; exact at logsnr = +-inf."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
