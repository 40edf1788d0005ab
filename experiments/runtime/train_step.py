"""The jitted train step: several optimizer steps per dispatch, the data gathered on device.

The whole training split lives on every device (sprites are tiny); step k's batch
indices, times, noise and context dropout derive from fold_in(key, k) alone, so a resumed
run repeats exactly what an uninterrupted one does, at any device count. The network's own
dropout (the UNet's) also folds in the device's place in the mesh: the same masks for the same
device count, whether one process holds the devices or several.
"""

import jax
import jax.numpy as jnp
import optax

from diffusion import losses, models
from experiments.runtime import parallel
from experiments.runtime.state import TrainState, ema_decay


def _batch(images, labels, key, batch_size: int, num_classes: int, drop_rate: float, mesh,
           hflip: bool = False):
  k_idx, k_drop = jax.random.split(key)
  idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
  idx = jax.lax.with_sharding_constraint(idx, parallel.batch_sharded(mesh))
  x0 = images[idx].astype(jnp.float32) / 127.5 - 1.0
  if hflip:  # half the batch mirrored; its own key, so the batches without it stay as they were
    mirror = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.5, (batch_size, 1, 1, 1))
    x0 = jnp.where(mirror, x0[:, :, ::-1], x0)
  label = labels[idx]
  context = jax.nn.one_hot(label, max(num_classes, 1)) * (label >= 0)[:, None]
  keep = jax.random.bernoulli(k_drop, 1.0 - drop_rate, (batch_size, 1))
  return x0, context * keep


def _levels(key, logsnr_fn, loss_kwargs: dict, timesteps: int, batch_size: int,
            importance: float, level_range: tuple[float, float] | None = None):
  """(t, loss correction) of one batch: uniform levels (correction 1), importance-drawn, or
  uniform in t over level_range = (t_lo, t_hi) only (a refiner's nearly clean band)."""
  if level_range is not None:
    t = jax.random.uniform(key, (batch_size,), minval=level_range[0], maxval=level_range[1])
    return t, jnp.ones((batch_size,), jnp.float32)
  if not importance:  # the draw every run before importance sampling made, kept bit for bit
    t = jax.random.randint(key, (batch_size,), 1, timesteps + 1).astype(jnp.float32)
    return t / timesteps, jnp.ones((batch_size,), jnp.float32)
  # the norm of the error leaves each level's weight as it is
  weights = losses.level_weights(logsnr_fn, timesteps,
                                 **{k: v for k, v in loss_kwargs.items() if k != 'norm'})
  return losses.importance_levels(key, weights, batch_size, importance)


def make_one_step(*, model, tx: optax.GradientTransformation, logsnr_fn, loss_kwargs: dict,
                  timesteps: int, batch_size: int, num_classes: int, cond_drop_rate: float,
                  ema_halflife_kimg: float, ema_rampup: float, mesh, hflip: bool = False,
                  importance: float = 0.0, self_cond: bool = False,
                  level_range: tuple[float, float] | None = None):
  """one_step(state, images, labels, key) -> (state, metrics), not jitted. The float settings
  may be traced values: runtime/multi_train.py vmaps it over models that differ only in them.
  hflip: train on random mirror images too (a switch: a side-facing sprite's mirror may mean
  something else, or be another sprite of the set). importance: the share of noise levels drawn
  where the loss weighs them (losses.importance_levels); 0 draws them uniformly. self_cond: the
  model is a self-conditioned UNet (losses.self_cond_input). level_range: (t_lo, t_hi), train
  only there (runtime/refiner.py); None: every level."""

  def one_step(state: TrainState, images, labels, key):
    k_batch, k_t, k_eps, k_dropout = jax.random.split(jax.random.fold_in(key, state.step), 4)
    x0, context = _batch(images, labels, k_batch, batch_size, num_classes, cond_drop_rate, mesh,
                          hflip)
    t, correction = _levels(k_t, logsnr_fn, loss_kwargs, timesteps, batch_size, importance,
                            level_range)
    eps = jax.random.normal(k_eps, x0.shape)

    def loss_fn(params, batch):  # one device's rows (parallel.mean_value_and_grad)
      x0, t, eps, context, correction = batch
      # Each device draws its own dropout masks: a key shared by all would repeat one mask.
      key = jax.random.fold_in(k_dropout, jax.lax.axis_index('data'))
      network = models.network_fn(model, params, train=True, dropout_key=key)
      per_example = losses.diffusion_loss(model_fn=network, x0=x0, t=t, eps=eps, context=context,
                                          logsnr_fn=logsnr_fn, self_cond=self_cond, **loss_kwargs)
      return jnp.mean(per_example * correction)

    loss, grads = parallel.mean_value_and_grad(loss_fn, mesh)(
        state.params, (x0, t, eps, context, correction))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    beta = ema_decay(state.step, batch_size, ema_halflife_kimg, ema_rampup)
    ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state)
    return new_state, {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  return one_step


def fuse(one_step, steps_per_dispatch: int):
  """train(state, *args) -> (state, metrics): `steps_per_dispatch` calls of one_step, metrics
  averaged over them."""

  def train(state, *args):
    if steps_per_dispatch == 1:
      return one_step(state, *args)
    # XLA:CPU runs convolution gradients inside loops ~15x slower than at top level (measured
    # with jax 0.10.2), so fused steps pay off on accelerators only (from_config.steps_per_dispatch).
    state, metrics = jax.lax.scan(lambda s, _: one_step(s, *args), state,
                                  length=steps_per_dispatch)
    return state, jax.tree.map(jnp.mean, metrics)
  return train


def make(*, steps_per_dispatch: int, mesh, **step_kwargs):
  """train(state, images, labels, key) -> (state, metrics): `steps_per_dispatch` steps in one call.

  step_kwargs: the keywords of make_one_step (model, tx, logsnr_fn, loss_kwargs, ...).
  """
  train = fuse(make_one_step(mesh=mesh, **step_kwargs), steps_per_dispatch)
  rep = parallel.replicated(mesh)
  return jax.jit(train, in_shardings=(rep, rep, rep, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))
