"""The Gaussian forward process and the conversions between prediction targets.

q(x_t | x0) = N(alpha_t x0, sigma_t^2 I), alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr).
logsnr may have the batch shape of x or fewer trailing axes; it is broadcast over pixels.

Prediction targets (what the network outputs):
  eps  the noise,                       x0 = (x_t - sigma eps) / alpha
  x0   the clean image,                 eps = (x_t - alpha x0) / sigma
  v    alpha eps - sigma x0 (Salimans & Ho 2022): x0 = alpha x_t - sigma v
  edm  F of EDM's preconditioning (Karras et al. 2022): x0 = c_skip x_t + c_out F,
       with the network fed c_in x_t. Written for the variance-preserving x_t used
       here; with sigma_data = 1 it reduces to v-prediction (F = -v).
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion import registry
from diffusion.schedules import alpha_sigma


def _expand(logsnr: jax.Array, x: jax.Array) -> jax.Array:
  logsnr = jnp.asarray(logsnr)
  return logsnr.reshape(logsnr.shape + (1,) * (x.ndim - logsnr.ndim))


def diffuse(*, x0: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """A sample of q(x_t | x0) = N(alpha x0, sigma^2 I), given standard normal eps."""
  alpha, sigma = alpha_sigma(_expand(logsnr, x0))
  return alpha * x0 + sigma * eps


def edm_scalings(logsnr: jax.Array, sigma_data: float):
  """(c_in, c_skip, c_out) of EDM, acting on variance-preserving x_t.

  With sigma_ve = sigma / alpha these are EDM's c_in / alpha, c_skip / alpha and c_out,
  rewritten so that they stay finite at alpha = 0 (zero terminal SNR).
  """
  alpha, sigma = alpha_sigma(logsnr)
  norm = jnp.sqrt(sigma**2 + (alpha * sigma_data) ** 2)
  return 1 / norm, sigma_data**2 * alpha / norm**2, sigma * sigma_data / norm


def eps_from_x0(*, x_t: jax.Array, x0: jax.Array, logsnr: jax.Array) -> jax.Array:
  """eps = (x_t - alpha x0) / sigma; at sigma = 0 (t = 0) eps is undefined and returned as 0."""
  alpha, sigma = alpha_sigma(_expand(logsnr, x_t))
  return jnp.where(sigma > 0, (x_t - alpha * x0) / jnp.where(sigma > 0, sigma, 1.0), 0.0)


class Target(NamedTuple):
  """One prediction target. Every function takes logsnr already broadcastable against x.

  target(x0, eps, logsnr, sigma_data)            what the network should output
  to_x0_eps(out, x_t, logsnr, sigma_data)        its output read back as (x0, eps)
  x0_error_scale(logsnr, sigma_data)             k with |x0_hat - x0|^2 = k |out - target|^2
  input_scale(logsnr, sigma_data)                the factor on x_t before the network
  """
  target: Callable
  to_x0_eps: Callable
  x0_error_scale: Callable
  input_scale: Callable = lambda logsnr, sigma_data: jnp.ones_like(logsnr)


def _via_x0(to_x0: Callable) -> Callable:
  """to_x0_eps for targets that give x0 directly: eps follows from x_t and x0."""
  def to_x0_eps(out, x_t, logsnr, sigma_data):
    x0 = to_x0(out, x_t, logsnr, sigma_data)
    return x0, eps_from_x0(x_t=x_t, x0=x0, logsnr=logsnr)
  return to_x0_eps


def _eps_to_x0_eps(out, x_t, logsnr, sigma_data):
  del sigma_data
  alpha, sigma = alpha_sigma(logsnr)
  return (x_t - sigma * out) / alpha, out


def _v_to_x0_eps(out, x_t, logsnr, sigma_data):
  del sigma_data
  alpha, sigma = alpha_sigma(logsnr)
  return alpha * x_t - sigma * out, sigma * x_t + alpha * out


def _v_target(x0, eps, logsnr, sigma_data):
  del sigma_data
  alpha, sigma = alpha_sigma(logsnr)
  return alpha * eps - sigma * x0


def _edm_target(x0, eps, logsnr, sigma_data):
  alpha, sigma = alpha_sigma(logsnr)
  _, c_skip, c_out = edm_scalings(logsnr, sigma_data)
  return (x0 - c_skip * (alpha * x0 + sigma * eps)) / c_out


def _edm_to_x0(out, x_t, logsnr, sigma_data):
  _, c_skip, c_out = edm_scalings(logsnr, sigma_data)
  return c_skip * x_t + c_out * out


PREDICTIONS = {
    'eps': Target(target=lambda x0, eps, logsnr, sigma_data: eps, to_x0_eps=_eps_to_x0_eps,
                  x0_error_scale=lambda logsnr, sigma_data: jnp.exp(-logsnr)),
    'x0': Target(target=lambda x0, eps, logsnr, sigma_data: x0,
                 to_x0_eps=_via_x0(lambda out, x_t, logsnr, sigma_data: out),
                 x0_error_scale=lambda logsnr, sigma_data: jnp.ones_like(logsnr)),
    'v': Target(target=_v_target, to_x0_eps=_v_to_x0_eps,
                x0_error_scale=lambda logsnr, sigma_data: alpha_sigma(logsnr)[1] ** 2),
    'edm': Target(target=_edm_target, to_x0_eps=_via_x0(_edm_to_x0),
                  x0_error_scale=lambda logsnr, sigma_data: edm_scalings(logsnr, sigma_data)[2] ** 2,
                  input_scale=lambda logsnr, sigma_data: edm_scalings(logsnr, sigma_data)[0]),
}


def get(prediction: str) -> Target:
  return registry.lookup(PREDICTIONS, prediction, 'prediction')


def input_scale(logsnr: jax.Array, prediction: str, sigma_data: float) -> jax.Array:
  """The factor applied to x_t before the network (1 except for EDM preconditioning)."""
  return get(prediction).input_scale(logsnr, sigma_data)


def to_x0_eps(*, out: jax.Array, x_t: jax.Array, logsnr: jax.Array, prediction: str,
              sigma_data: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """The network output `out` read as (x0, eps) for the given prediction target."""
  return get(prediction).to_x0_eps(out, x_t, _expand(logsnr, x_t), sigma_data)


def target(*, x0: jax.Array, eps: jax.Array, logsnr: jax.Array, prediction: str,
           sigma_data: float = 0.5) -> jax.Array:
  """What the network should output at x_t = alpha x0 + sigma eps."""
  return get(prediction).target(x0, eps, _expand(logsnr, x0), sigma_data)


def x0_error_scale(logsnr: jax.Array, prediction: str, sigma_data: float = 0.5) -> jax.Array:
  """k with |x0_hat - x0|^2 = k |out - target|^2 at fixed x_t: eps 1/snr, x0 1, v sigma^2, edm c_out^2."""
  return get(prediction).x0_error_scale(logsnr, sigma_data)


def posterior(*, x_t: jax.Array, x0: jax.Array, logsnr_t: jax.Array,
              logsnr_s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation of q(x_s | x_t, x0) for s < t (Kingma et al. 2021, eq. 26-29).

  With r = SNR(t) / SNR(s): mean = r (alpha_s / alpha_t) x_t + (1 - r) alpha_s x0 and
  variance (1 - r) sigma_s^2. The x_t coefficient is written as alpha_t sigma_s^2 /
  (sigma_t^2 alpha_s) so that it is 0, not nan, at alpha_t = 0.
  """
  logsnr_t, logsnr_s = _expand(logsnr_t, x_t), _expand(logsnr_s, x_t)
  alpha_t, sigma_t = alpha_sigma(logsnr_t)
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)
  mean = alpha_t * sigma_s**2 / (sigma_t**2 * alpha_s) * x_t + one_minus_r * alpha_s * x0
  return mean, jnp.sqrt(one_minus_r) * sigma_s
