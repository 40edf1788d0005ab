"""Samplers: one step function each, one shared loop that runs inside a single jit.

Every step moves x from time t to an earlier time s on a grid from t = 1 (or a later start:
time_grid's logsnr_start) to t = 0, using only a denoiser (x_t, t, logsnr) -> (x0_hat, eps_hat).
The schedule enters only as that grid of (t, logSNR(t)) values (EDM's "discretization" switch),
so the step count is independent of the training T, every sampler works with every schedule and
prediction target, and one compiled sampler serves any schedule of the same length. All
formulas use (alpha, sigma) of the variance-preserving process, so they stay finite at zero
terminal SNR (alpha = 0 at t = 1).

Randomness: sprite i's starting noise and its noise at step k derive from keys[i] alone
(fold_in(keys[i], k)), so a sprite is the same at any batch size or device count.
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import gaussian, registry
from diffusion.denoiser import Denoiser
from diffusion.schedules import alpha_sigma


class Step(NamedTuple):
  t: jax.Array       # current time
  s: jax.Array       # next (earlier) time
  logsnr_t: jax.Array
  logsnr_s: jax.Array
  noise: jax.Array | None  # standard normal like x, for stochastic samplers
  last: jax.Array | bool = False  # the final step of the grid


def ddpm(denoise: Denoiser, x, step: Step, carry, **_):
  """Ancestral sampling (Ho et al. 2020): draw x_s from q(x_s | x_t, x0 = x0_hat)."""
  x0, _ = denoise(x, step.t, step.logsnr_t)
  mean, std = gaussian.posterior(x_t=x, x0=x0, logsnr_t=step.logsnr_t, logsnr_s=step.logsnr_s)
  return mean + std * step.noise, x0, carry


def ddim(denoise: Denoiser, x, step: Step, carry, *, eta: float = 0.0):
  """DDIM (Song et al. 2021): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z.

  c = eta * (posterior std), so eta = 0 is deterministic and eta = 1 matches ddpm.
  """
  x0, eps = denoise(x, step.t, step.logsnr_t)
  alpha_s, sigma_s = alpha_sigma(step.logsnr_s)
  c = eta * jnp.sqrt(-jnp.expm1(step.logsnr_t - step.logsnr_s)) * sigma_s
  x_s = alpha_s * x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0)) * eps
  if eta > 0:
    x_s = x_s + c * step.noise
  return x_s, x0, carry


def euler(denoise: Denoiser, x, step: Step, carry, **_):
  """Euler on EDM's probability-flow ODE dx_ve/dsigma_ve = eps_hat (x_ve = x / alpha).

  Written back in variance-preserving form this is x_s = alpha_s x0 + sigma_s eps: the
  same update as DDIM with eta = 0 (Karras et al. 2022, sec. 4), pinned by a test.
  """
  x0, eps = denoise(x, step.t, step.logsnr_t)
  alpha_s, sigma_s = alpha_sigma(step.logsnr_s)
  return alpha_s * x0 + sigma_s * eps, x0, carry


# Heun corrects only steps that start at sigma_ve <= this: EDM's sigma_max (80), with room for
# float32 rounding of EDM's own first step (79.99996).
HEUN_SIGMA_MAX = 100.0


def heun(denoise: Denoiser, x, step: Step, carry, **_):
  """EDM's 2nd-order Heun step: average the ODE slope at t and at the Euler guess at s.

  The slope is dx_ve/dsigma_ve = eps. The trapezoid rule weighs the slope at s over half
  the interval, which is right for EDM's sigma_max ~ 80 but not for a first step from the
  cosine schedule's logSNR -20 (sigma_ve ~ 2e4): there eps is constant over nearly all of
  the interval and only changes near s, so averaging threw the sample far off (5.4 from
  the exact ODE end at 13 steps for Gaussian data, where DDIM lands 0.13). Steps from
  above HEUN_SIGMA_MAX are Euler steps instead (exact while eps is constant), as is the
  last one (sigma_s = 0, as in EDM) and a start from infinite sigma_ve (zero terminal
  SNR); with that, 13 steps on cosine land 0.024 away.
  """
  x0, eps = denoise(x, step.t, step.logsnr_t)
  alpha_t, sigma_t = alpha_sigma(step.logsnr_t)
  alpha_s, sigma_s = alpha_sigma(step.logsnr_s)
  x_euler = alpha_s * x0 + sigma_s * eps
  # sigma_ve(t) = sigma_t / alpha_t <= HEUN_SIGMA_MAX, without dividing by alpha_t = 0.
  correct = (sigma_s > 0) & (sigma_t <= HEUN_SIGMA_MAX * alpha_t)

  def corrected(_):
    _, eps_s = denoise(x_euler, step.s, step.logsnr_s)
    far = alpha_s * sigma_t / jnp.where(alpha_t > 0, alpha_t, 1.0)  # alpha_s * sigma_ve(t)
    return alpha_s * x0 + 0.5 * (sigma_s + far) * eps + 0.5 * (sigma_s - far) * eps_s
  return jax.lax.cond(correct, corrected, lambda _: x_euler, None), x0, carry


def dpmpp_2m(denoise: Denoiser, x, step: Step, carry, **_):
  """DPM-Solver++(2M) (Lu et al. 2022), in h = half-logSNR steps, multistep.

  x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^-h) D, with D = x0_hat on the first and
  last steps and D = x0_t + h / (2 h_prev) (x0_t - x0_prev) in between. The last step is
  first order also when the grid ends at a finite logSNR (edm, shifted_cosine): there h is
  many times h_prev (shifted_cosine at 10 steps: logSNR 2.3 -> 3.7, then 3.7 -> 20), and the
  extrapolation h / (2 h_prev) would amplify the x0 difference far past the true curve;
  reference implementations (k-diffusion, diffusers' lower_order_final) do the same.
  """
  x0_prev, h_prev = carry
  x0, _ = denoise(x, step.t, step.logsnr_t)
  alpha_s, sigma_s = alpha_sigma(step.logsnr_s)
  _, sigma_t = alpha_sigma(step.logsnr_t)
  h = 0.5 * (step.logsnr_s - step.logsnr_t)
  second = jnp.isfinite(h) & jnp.isfinite(h_prev) & (h_prev > 0) & ~jnp.asarray(step.last)
  ratio = jnp.where(second, h / jnp.where(second, 2 * h_prev, 1.0), 0.0)
  d = x0 + ratio * (x0 - x0_prev)
  x_s = (sigma_s / sigma_t) * x + alpha_s * -jnp.expm1(-h) * d
  return x_s, x0, (x0, h)


class Sampler(NamedTuple):
  step: Callable
  stochastic: bool             # needs fresh noise every step
  init_carry: Callable = lambda x: None


SAMPLERS = {
    'ddpm': Sampler(ddpm, True),
    'ddim': Sampler(ddim, True),  # stochastic only when eta > 0
    'euler': Sampler(euler, False),
    'heun': Sampler(heun, False),
    # h_prev follows x's dtype, so that the loop's carry keeps one type under jax_enable_x64.
    'dpmpp_2m': Sampler(dpmpp_2m, False, lambda x: (jnp.zeros_like(x), jnp.zeros((), x.dtype))),
}


def get(name: str) -> Sampler:
  return registry.lookup(SAMPLERS, name, 'sampler')


def time_at(logsnr_fn: Callable[[jax.Array], jax.Array], logsnr) -> np.ndarray:
  """The t in [0, 1] where the (decreasing) schedule reaches each `logsnr`, by bisection: all
  targets at once, so a grid costs 40 schedule calls, not 40 per point. Float64 bounds, the
  schedule evaluated in float32 as the samplers do."""
  target = np.asarray(logsnr, np.float64)
  lo, hi = np.zeros_like(target), np.ones_like(target)  # logsnr_fn(lo) >= target >= logsnr_fn(hi)
  for _ in range(40):
    mid = 0.5 * (lo + hi)
    above = np.asarray(logsnr_fn(jnp.asarray(mid, jnp.float32))) > target
    lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
  return 0.5 * (lo + hi)


def time_grid(logsnr_fn: Callable[[jax.Array], jax.Array], steps: int,
              logsnr_end: float = jnp.inf, logsnr_span: tuple[float, float] | None = None,
              logsnr_start: float = -jnp.inf):
  """(t, logsnr(t)) at t_0 > ... > t_steps = 0, uniform in t (a schedule may warp it, as edm
  does); t_0 = 1 unless logsnr_start moves it.

  A finite logsnr_start moves t_0 to where logsnr(t_0) = logsnr_start: the sampler's pure noise
  is taken as x there, as EDM starts at sigma_max = 80 (logSNR -8.8), so the first network call
  is at a level training reached. Near t = 1 a min-SNR-weighted network is barely trained (its
  weight on the x0 error is the SNR itself, e^-20 at logSNR -20), and the first step carries its
  x0_hat there into x with weight alpha(t_1). The cost: x_1's own signal, alpha(t_0) x0, left out.

  A finite logsnr_end spreads the first steps - 1 intervals uniformly over t in [t_0, t_end], where
  logsnr(t_end) = logsnr_end, and makes the last one jump from t_end to t = 0, so the result
  is x0_hat at logsnr_end: the same network calls, none spent on the nearly clean levels.

  logsnr_span = (lo, hi) puts the steps - 1 inner points uniformly in logSNR from lo to hi,
  close to DPM-Solver's 'logSNR' spacing: uniform in t, the cosine schedule leaves few steps at
  the clean end (two of 20 above logSNR 3.5). It needs logsnr(1) < lo < hi < logsnr(0), and
  steps >= 3 to use both ends; it replaces logsnr_end.
  """
  # At or past the schedule's own ends (edm's are finite) there is nothing to cut.
  t_start = float(time_at(logsnr_fn, logsnr_start)) \
      if logsnr_start > float(logsnr_fn(jnp.ones(()))) else 1.0
  if logsnr_span is not None:
    if math.isfinite(logsnr_end):
      raise ValueError('time_grid: logsnr_end and logsnr_span both place the steps; give one.')
    inner = time_at(logsnr_fn, jnp.linspace(*logsnr_span, steps - 1))
    ts = jnp.asarray([t_start, *inner, 0.0], jnp.float32)
    return ts, logsnr_fn(ts)
  cut = logsnr_end < float(logsnr_fn(jnp.zeros(())))
  t_end = float(time_at(logsnr_fn, logsnr_end)) if cut else 0.0
  ts = jnp.concatenate([jnp.linspace(t_start, t_end, steps), jnp.zeros(1)]) if t_end > 0 else \
      jnp.linspace(t_start, 0.0, steps + 1)
  return ts, logsnr_fn(ts)


def initial_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """x_1 ~ N(0, I) per sprite, from that sprite's own key."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)


def _step_noise(keys: jax.Array, i: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i + 1), shape))(keys)


REFINE_STREAM = 2**31 - 1  # fold_in index of refine's noise: beyond any step's (i + 1)


def refine(denoise: Denoiser, x0: jax.Array, keys: jax.Array, *, t, logsnr, draws: int,
           self_cond: bool = False) -> jax.Array:
  """The mean of x0_hat over `draws` fresh noisings of the drawn sprites x0 at one nearly clean
  level (t, logsnr): a last pass after the sampler, when draws > 0.

  A sampler's result is an x0_hat from a nearly clean x_t, and a network's x0_hat keeps part of
  the noise it was given: the part of its error that follows that noise shows as speckle in
  flat regions. Noised again at `logsnr` and denoised, `draws` times with independent noise,
  that part averages away (its variance falls as 1 / draws), while what the network knows of the
  sprite is in every draw and stays: a Monte Carlo estimate of the denoiser smoothed over the
  noise of that level. Noise from each sprite's own key, as the sampler's; inside jit.
  self_cond: each draw calls the network twice, first without an earlier estimate, then with
  that first x0_hat (not with x0: a network handed the drawn sprite may copy its speckle back).
  """
  if draws < 1:
    raise ValueError(f'refine: draws={draws}; average over at least one noising.')
  logsnr = jnp.asarray(logsnr, jnp.float32)
  alpha, sigma = alpha_sigma(logsnr)
  fresh = jax.vmap(lambda k, j: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(k, REFINE_STREAM), j), x0.shape[1:]), (0, None))

  def body(j, total):
    x_t = alpha * x0 + sigma * fresh(keys, j)
    if self_cond:
      first, _ = denoise(x_t, t, logsnr, jnp.zeros_like(x0))
      x0_hat, _ = denoise(x_t, t, logsnr, jnp.clip(first, -1.0, 1.0))
    else:
      x0_hat, _ = denoise(x_t, t, logsnr)
    return total + x0_hat

  return jax.lax.fori_loop(0, draws, body, jnp.zeros_like(x0)) / draws


class Movie(NamedTuple):
  """The denoising movie: what the sampler saw at `frames` evenly spread steps."""
  x_t: jax.Array   # [frames, B, *shape] the state entering each recorded step
  x0: jax.Array    # [frames, B, *shape] the predicted x0 at that step
  step: jax.Array  # [frames] the recorded step indices (0 = the first step, from the grid's start)
  t: jax.Array     # [frames] the time each recorded step started from


def _recorded_steps(steps: int, frames: int) -> tuple[jax.Array, jax.Array]:
  """(the `frames` <= steps step indices spread evenly, slot[i] = frame of step i or -1)."""
  chosen = jnp.round(jnp.linspace(0, steps - 1, frames)).astype(jnp.int32)  # distinct: frames <= steps
  slots = jnp.full((steps,), -1, jnp.int32).at[chosen].set(jnp.arange(frames, dtype=jnp.int32))
  return chosen, slots


def sample(*, denoise: Denoiser, grid: tuple[jax.Array, jax.Array], keys: jax.Array,
           shape: tuple[int, ...], sampler: str = 'ddpm', eta: float = 0.0, frames: int = 0,
           self_cond: bool = False):
  """Draw one sprite per key: x_1 ~ N(0, I), then a `sampler` step per interval of `grid`.

  grid: (ts, logsnrs), each [steps + 1], from t = 1 (or a later start) down to t = 0 (see
  `time_grid`); x_1 is taken as x at the grid's start.
  Returns x0 [B, *shape], or with frames > 0 (x0, Movie) with min(frames, steps) evenly spread
  steps recorded. self_cond: every step's denoiser also gets the previous step's x0_hat (zeros at
  the first), for self-conditioned networks. Call it inside jit.
  """
  spec = get(sampler)
  stochastic = spec.stochastic and (sampler != 'ddim' or eta > 0)
  ts, logsnrs = grid
  steps = ts.shape[0] - 1
  frames = min(frames, steps)
  recorded, slots = _recorded_steps(steps, max(frames, 1))
  x = initial_noise(keys, shape)
  movie = jnp.zeros((max(frames, 1), 2) + x.shape, x.dtype)

  def body(i, state):
    x, carry, movie, x0_last = state
    noise = _step_noise(keys, i, shape) if stochastic else None
    step = Step(ts[i], ts[i + 1], logsnrs[i], logsnrs[i + 1], noise, i == steps - 1)
    step_denoise = (lambda x_t, t, logsnr: denoise(x_t, t, logsnr, x0_last)) if self_cond \
        else denoise
    x_s, x0, carry = spec.step(step_denoise, x, step, carry, eta=eta)
    if frames:
      movie = jax.lax.cond(slots[i] >= 0,
                           lambda m: m.at[slots[i]].set(jnp.stack([x, x0])),
                           lambda m: m, movie)
    return x_s, carry, movie, x0

  x, _, movie, _ = jax.lax.fori_loop(0, steps, body,
                                     (x, spec.init_carry(x), movie, jnp.zeros_like(x)))
  if frames:
    return x, Movie(movie[:, 0], movie[:, 1], recorded, ts[recorded])
  return x
