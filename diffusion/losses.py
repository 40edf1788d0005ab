"""The denoising loss, with the prediction target and the weighting as arguments.

Every weighting is stated as w(logsnr) on the x0-space error |x0_hat - x0|^2 (Kingma & Gao
2023 state them on the eps error; w_eps = w_x0 / snr). The loss the network sees is
w_x0 * k * |out - target|^2, where k = x0_error_scale converts its own error to x0
space. So a weighting means the same thing whatever the network predicts, and
"simple" is the exception by design: the plain MSE on the network's own target (L_simple).

The norm of the error is a switch (NORMS). The squared error trains the network towards the mean
of the clean sprites that could lie under x_t, value by value; the absolute error towards their
median. Where a pixel could be one of a few flat colours, the mean blends them by their odds, a
blend that differs from pixel to pixel; the median is the colour itself wherever one holds more
than half the odds. Per pixel, L2 also spends its gradient in proportion to the error, on edges
and on the colour of a region, and little on the small errors that speckle a flat fill; L1 gives
every value the same share. The median has its price: it pulls colours towards a set's commonest
(DawnLike's browns), so l1 is a switch and not the presets' (docs/ablations.md).

l1_tv adds the error's total variation: the absolute differences between neighbouring values of
out - goal, which for a fixed noise level are those of x0_hat - x0. In a flat fill of the clean
sprite they are x0_hat's own differences, its speckle, and their median is zero wherever the fill
most likely goes on: a prior for piecewise-flat pixel art that a squared error on the differences
would not give (its minimiser is the mean again). The refiner is fine-tuned with it.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion import gaussian, registry

WEIGHTINGS = ('simple', 'min_snr', 'sigmoid', 'edm', 'elbo')
NORMS = ('l2', 'l1', 'l1_tv')
TV_WEIGHT = 16.0  # l1_tv: the differences' share against the values' (4 and 64 did as well on
                  # the refiner of one model: docs/ablations.md)


def x0_weight(name: str, *, logsnr: jax.Array, dlogsnr_dt: jax.Array | None = None,
              min_snr_gamma: float = 5.0, sigmoid_bias: float = 2.0,
              sigma_data: float = 0.5) -> jax.Array:
  """w(logsnr) on |x0_hat - x0|^2 for the weightings other than 'simple'.

  min_snr  min(snr, gamma) (Hang et al. 2023)
  sigmoid  snr * sigmoid(b - logsnr) = e^b sigmoid(logsnr - b) (Kingma & Gao 2023)
  edm      (sigma_ve^2 + sigma_data^2) / (sigma_ve sigma_data)^2 = 1/sigma_data^2 + snr
  elbo     -1/2 dlogsnr/dt * snr: the continuous-time likelihood bound (Kingma et al. 2021)
  """
  snr = jnp.exp(logsnr)
  if name == 'min_snr':
    return jnp.minimum(snr, min_snr_gamma)
  if name == 'sigmoid':
    return jnp.exp(sigmoid_bias) * jax.nn.sigmoid(logsnr - sigmoid_bias)
  if name == 'edm':
    return 1 / sigma_data**2 + snr
  if name == 'elbo':
    return -0.5 * dlogsnr_dt * snr
  # 'simple' is no weight on the x0 error (loss_weight handles it), so it is not valid here.
  registry.check(name, WEIGHTINGS[1:], 'loss weighting')


def loss_weight(name: str, *, logsnr: jax.Array, prediction: str, sigma_data: float = 0.5,
                **kwargs) -> jax.Array:
  """The weight on the network's own squared error |out - target|^2."""
  if name == 'simple':
    return jnp.ones_like(logsnr)
  scale = gaussian.x0_error_scale(logsnr, prediction, sigma_data)
  return x0_weight(name, logsnr=logsnr, sigma_data=sigma_data, **kwargs) * scale


def _logsnr_and_slope(logsnr_fn, t: jax.Array, weighting: str):
  """logSNR at t, and its slope dlogSNR/dt where the weighting needs it (elbo)."""
  if weighting == 'elbo':
    return jax.jvp(logsnr_fn, (t,), (jnp.ones_like(t),))
  return logsnr_fn(t), None


def level_weights(logsnr_fn: Callable[[jax.Array], jax.Array], timesteps: int, *,
                  prediction: str, weighting: str, sigma_data: float = 0.5,
                  min_snr_gamma: float = 5.0, sigmoid_bias: float = 2.0) -> jax.Array:
  """[T] the weight diffusion_loss puts on the network's error at each training level
  t = i / T, i = 1..T (non-finite ones, at the schedule's clipped ends, count as 0)."""
  t = jnp.arange(1, timesteps + 1, dtype=jnp.float32) / timesteps
  logsnr, dlogsnr_dt = _logsnr_and_slope(logsnr_fn, t, weighting)
  w = loss_weight(weighting, logsnr=logsnr, prediction=prediction, sigma_data=sigma_data,
                  dlogsnr_dt=dlogsnr_dt, min_snr_gamma=min_snr_gamma, sigmoid_bias=sigmoid_bias)
  return jnp.where(jnp.isfinite(w), w, 0.0)


def importance_levels(key: jax.Array, weights: jax.Array, batch_size: int,
                      share: float) -> tuple[jax.Array, jax.Array]:
  """(t [B], correction [B]): training levels drawn where the loss weighs them, for less noise.

  Level i is drawn with q_i = share * w_i / sum(w) + (1 - share) / T instead of 1 / T, and its
  loss is multiplied by (1 / T) / q_i, so the expected loss (and gradient) is exactly that of
  uniform levels. With a weighting such as min-SNR, uniform levels spend a quarter of the batch
  where the weight is nearly 0; drawn in proportion to it, every example carries about the same
  weight (importance sampling; the EDM noise distribution does the same by design, Karras et al.
  2022). The uniform share keeps every level drawn now and then.
  """
  num_levels = weights.shape[0]
  q = share * weights / jnp.sum(weights) + (1.0 - share) / num_levels
  i = jax.random.categorical(key, jnp.log(q), shape=(batch_size,))
  return (i + 1).astype(jnp.float32) / num_levels, (1.0 / num_levels) / q[i]


def self_cond_input(*, model_fn: Callable[..., jax.Array], x_in: jax.Array, x_t: jax.Array,
                    t: jax.Array, logsnr: jax.Array, context: jax.Array, prediction: str,
                    sigma_data: float = 0.5) -> jax.Array:
  """What a self-conditioned network is shown as its earlier x0_hat while training.

  Every other example gets the network's own x0_hat from a pass without one (zeros), the others
  zeros: half learn to start an estimate, half to refine one, as at sampling time (Chen et al.
  2022). Only those rows make the first pass, forward only: a sixth of a step's arithmetic, not
  a third (19% more time per step on a 2-core CPU). No gradient flows through it. x0_hat is
  clipped to [-1, 1], as the samplers clip it.
  """
  half = slice(None, None, 2)
  out = model_fn(x_in[half], t[half], logsnr[half], context[half],
                 x0_self=jnp.zeros_like(x_in[half])).astype(jnp.float32)
  x0, _ = gaussian.to_x0_eps(out=out, x_t=x_t[half], logsnr=logsnr[half], prediction=prediction,
                             sigma_data=sigma_data)
  return jnp.zeros_like(x_in).at[half].set(jax.lax.stop_gradient(jnp.clip(x0, -1.0, 1.0)))


def example_error(out: jax.Array, goal: jax.Array, norm: str = 'l2') -> jax.Array:
  """[B] each example's error: its mean squared error (l2), or for l1 2 * mae * sg(mae), where
  mae is its mean absolute error and sg stops the gradient.

  The l1 form keeps the loss's scale and every weighting's meaning: its gradient is
  2 * mae * sign(out - goal) / n per value, whose size matches l2's 2 * |out - goal| / n on
  average over the example, so each noise level gets the gradient its weight gives it under l2,
  while the values share it equally. Its value is mae^2 doubled, (4 / pi) mse for Gaussian errors.
  l1_tv: the same with mae replaced by (mae + TV_WEIGHT * tv) / (1 + TV_WEIGHT), tv the mean
  absolute difference between horizontally and vertically neighbouring values of the error.
  """
  axes = tuple(range(1, out.ndim))
  error = out - goal
  if norm == 'l2':
    return jnp.mean(jnp.square(error), axis=axes)
  registry.check(norm, NORMS, 'loss norm')
  mae = jnp.mean(jnp.abs(error), axis=axes)
  if norm == 'l1_tv':  # [B, H, W, C]: rows are axis 1, columns axis 2
    tv = 0.5 * (jnp.mean(jnp.abs(jnp.diff(error, axis=1)), axis=axes)
                + jnp.mean(jnp.abs(jnp.diff(error, axis=2)), axis=axes))
    mae = (mae + TV_WEIGHT * tv) / (1 + TV_WEIGHT)
  return 2.0 * jax.lax.stop_gradient(mae) * mae


def diffusion_loss(*, model_fn: Callable[..., jax.Array], x0: jax.Array, t: jax.Array,
                   eps: jax.Array, context: jax.Array, logsnr_fn: Callable[[jax.Array], jax.Array],
                   prediction: str, weighting: str, sigma_data: float = 0.5,
                   min_snr_gamma: float = 5.0, sigmoid_bias: float = 2.0,
                   self_cond: bool = False, norm: str = 'l2') -> jax.Array:
  """Per-example loss: w * mean over pixels of |model_fn(c_in x_t, t, logsnr, context) - target|^2
  (norm='l2'; 'l1': example_error).

  x0: [B, H, W, C] data; t: [B] times in (0, 1]; eps: standard normal like x0; context: [B, K].
  self_cond: the network also takes x0_self= (self_cond_input).
  """
  logsnr, dlogsnr_dt = _logsnr_and_slope(logsnr_fn, t, weighting)
  x_t = gaussian.diffuse(x0=x0, eps=eps, logsnr=logsnr)
  x_in = x_t * gaussian.input_scale(logsnr, prediction, sigma_data)[:, None, None, None]
  extra = {}
  if self_cond:
    extra['x0_self'] = self_cond_input(model_fn=model_fn, x_in=x_in, x_t=x_t, t=t, logsnr=logsnr,
                                       context=context, prediction=prediction,
                                       sigma_data=sigma_data)
  out = model_fn(x_in, t, logsnr, context, **extra).astype(jnp.float32)
  goal = gaussian.target(x0=x0, eps=eps, logsnr=logsnr, prediction=prediction,
                         sigma_data=sigma_data)
  error = example_error(out, goal, norm)
  weight = loss_weight(weighting, logsnr=logsnr, prediction=prediction, sigma_data=sigma_data,
                       dlogsnr_dt=dlogsnr_dt, min_snr_gamma=min_snr_gamma,
                       sigmoid_bias=sigmoid_bias)
  return weight * error
