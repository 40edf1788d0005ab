"""From a network to a denoiser: x_t, t -> (x0_hat, eps_hat), with guidance and thresholding.

Classifier-free guidance (Ho & Salimans 2022) combines a conditional and an
unconditional (null, all-zero context) output as (1 + w) cond - w uncond; w = 0 is plain
conditional sampling. Guidance may be limited to an interval of noise levels (Kynkaanniemi et
al. 2024): at high noise it pulls every sample of a class toward one layout (variety lost), at
low noise it only sharpens what is already decided, so w applies where lo <= logsnr <= hi and
is 0 elsewhere. The outputs are mixed in the network's own target space, which is
the same as mixing x0 and eps, since both are affine in the output at fixed x_t.
Contexts may be any vectors: one-hot classes, or weighted mixes such as 0.6 food + 0.4 spell.
Autoguidance (`autoguided`) steers away from a weaker network instead, and combines with CFG.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion import gaussian, registry

# (x_t [B, H, W, C], t, logsnr(t)[, x0_prev]) -> (x0_hat, eps_hat); t and logsnr are scalars or
# [B]; x0_prev, an earlier x0_hat, only for self-conditioned networks.
Denoiser = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
THRESHOLDS = ('none', 'clip', 'dynamic')


def threshold_x0(x0: jax.Array, method: str, percentile: float = 0.995) -> jax.Array:
  """Keep x0_hat in the data range [-1, 1].

  clip     clamp each pixel.
  dynamic  Imagen (Saharia et al. 2022): s = max(1, percentile of |x0| per sample);
           clamp to [-s, s] and divide by s, which keeps saturated samples from going flat.
  """
  if method == 'none':
    return x0
  if method == 'clip':
    return jnp.clip(x0, -1.0, 1.0)
  if method == 'dynamic':
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s
  registry.check(method, THRESHOLDS, 'x0 threshold')


def autoguided(model_fn: Callable[..., jax.Array], guide_fn: Callable[..., jax.Array],
               weight: float) -> Callable[..., jax.Array]:
  """Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"):
  (1 + weight) f - weight f_guide, where f_guide is a weaker network of the same kind, here an
  early checkpoint of the same run, called with the same inputs and context. Its errors are
  f's, only larger, so stepping away from it removes what f has not yet learnt well (blotchy
  fills, speckles) without CFG's pull towards each class's most typical sprite. The outputs
  are combined in the networks' target space, like classifier-free guidance."""
  def fn(*args, **kwargs):
    out = model_fn(*args, **kwargs).astype(jnp.float32)
    return (1 + weight) * out - weight * guide_fn(*args, **kwargs).astype(jnp.float32)
  return fn


def make_denoiser(*, model_fn: Callable[..., jax.Array],
                  context: jax.Array, prediction: str, sigma_data: float = 0.5, guidance: float = 0.0,
                  guidance_logsnr: tuple[float, float] = (-jnp.inf, jnp.inf),
                  threshold: str = 'clip', percentile: float = 0.995,
                  self_cond: bool = False) -> Denoiser:
  """A denoiser for a batch whose context vectors are `context` [B, num_classes].

  model_fn(x_in, t, logsnr, context) -> output, with x_in the (preconditioned) noisy image
  [B, H, W, C] and t, logsnr [B]. With guidance != 0 the conditional and null-context halves run
  as one batch, at the noise levels guidance_logsnr = (lo, hi) admits (by default all). The
  schedule is not needed here: the sampler passes logsnr(t) along with t. self_cond: model_fn
  also takes x0_self=, the sampler's last x0_hat (zeros before the first).
  """
  def call(x_in, t, logsnr, context, x0_prev):
    extra = {'x0_self': x0_prev} if self_cond else {}
    return model_fn(x_in, t, logsnr, context, **extra).astype(jnp.float32)

  def output(x_t, t, logsnr, x0_prev):
    x_in = x_t * gaussian.input_scale(logsnr, prediction, sigma_data)[:, None, None, None]
    conditional = lambda: call(x_in, t, logsnr, context, x0_prev)
    if guidance == 0.0:
      return conditional()
    lo, hi = guidance_logsnr
    inside = (logsnr >= lo) & (logsnr <= hi)

    def guided():
      twice = lambda a: jnp.concatenate([a, a])
      both = call(twice(x_in), twice(t), twice(logsnr),
                  jnp.concatenate([context, jnp.zeros_like(context)]), twice(x0_prev))
      cond, uncond = jnp.split(both, 2)
      w = jnp.where(inside, guidance, 0.0)[:, None, None, None]
      return (1 + w) * cond - w * uncond

    if (lo, hi) == (-jnp.inf, jnp.inf):
      return guided()
    # Outside the interval the null-context half is not needed: skip its network call.
    return jax.lax.cond(jnp.any(inside), guided, conditional)

  def denoise(x_t, t, logsnr, x0_prev=None):
    t = jnp.broadcast_to(t, x_t.shape[:1])
    logsnr = jnp.broadcast_to(logsnr, x_t.shape[:1])
    x0_prev = jnp.zeros_like(x_t) if x0_prev is None else x0_prev
    x0, eps = gaussian.to_x0_eps(out=output(x_t, t, logsnr, x0_prev), x_t=x_t, logsnr=logsnr,
                                 prediction=prediction, sigma_data=sigma_data)
    if threshold == 'none':
      return x0, eps
    x0 = threshold_x0(x0, threshold, percentile)
    return x0, gaussian.eps_from_x0(x_t=x_t, x0=x0, logsnr=logsnr)
  return denoise
