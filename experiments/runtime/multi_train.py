"""k models in one jitted train step: the seeds of a sweep point, and points that differ only in
numbers (learning rate, EMA length, loss-weighting parameters), trained as one vmapped step.

train_step.make_one_step is vmapped over a leading model axis of the train state, of the key and
of `Settings`; everything that sets shapes or code paths (model, schedule, target, weighting,
batch size, optimizer kind) is shared. So model i computes what a run of its own would, to float
rounding, and its slice of the state is an ordinary TrainState: `unstack` gives states that save
to, and restore from, a normal run's checkpoints. A 16x16 model leaves most of an accelerator
idle; k of them in one step fill it (see experiments/benchmark.py --what=models).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from experiments.runtime import parallel, state as state_lib, train_step


class Settings(NamedTuple):
  """The numbers a model of the group has of its own: scalars, or [k] arrays once stacked."""
  learning_rate: jax.Array      # peak; the shared optimizer is built with peak 1 (see scaled)
  ema_halflife_kimg: jax.Array
  ema_rampup: jax.Array
  cond_drop_rate: jax.Array
  sigma_data: jax.Array
  min_snr_gamma: jax.Array
  sigmoid_bias: jax.Array


def scaled(tx: optax.GradientTransformation, factor) -> optax.GradientTransformation:
  """tx with its updates times `factor`, and tx's own state (so checkpoints keep their layout).

  Every learning-rate schedule here is peak x a shape (warm-up, linear, cosine) and Adam(W)
  multiplies its whole update by it, so tx built with peak 1 and scaled by the peak equals tx
  built with that peak, to rounding.
  """
  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u: factor * u, updates), state
  return optax.GradientTransformation(tx.init, update)


def stack(trees, mesh):
  """[k] trees of equal structure -> one tree of [k, ...] arrays, replicated over `mesh`."""
  return jax.jit(lambda *t: jax.tree.map(lambda *xs: jnp.stack(xs), *t),
                 out_shardings=parallel.replicated(mesh))(*trees)


def unstack(tree, mesh) -> list:
  """The inverse of `stack`: one tree per model."""
  k = jax.tree.leaves(tree)[0].shape[0]
  take = jax.jit(lambda t, i: jax.tree.map(lambda x: x[i], t),
                 out_shardings=parallel.replicated(mesh))
  return [take(tree, i) for i in range(k)]


def make(*, model, unit_tx: optax.GradientTransformation, logsnr_fn, prediction: str,
         weighting: str, timesteps: int, batch_size: int, num_classes: int, norm: str = 'l2',
         steps_per_dispatch: int, mesh, hflip: bool = False, importance: float = 0.0,
         self_cond: bool = False):
  """train(states, images, labels, keys, settings) -> (states, metrics of shape [k]).

  states, keys and settings carry the model axis first; unit_tx is the optimizer with peak
  learning rate 1.
  """
  def member(state, images, labels, key, s: Settings):
    one_step = train_step.make_one_step(
        model=model, tx=scaled(unit_tx, s.learning_rate), logsnr_fn=logsnr_fn,
        loss_kwargs=dict(prediction=prediction, weighting=weighting, sigma_data=s.sigma_data,
                         min_snr_gamma=s.min_snr_gamma, sigmoid_bias=s.sigmoid_bias, norm=norm),
        timesteps=timesteps, batch_size=batch_size, num_classes=num_classes,
        cond_drop_rate=s.cond_drop_rate, ema_halflife_kimg=s.ema_halflife_kimg,
        ema_rampup=s.ema_rampup, mesh=mesh, hflip=hflip, importance=importance,
        self_cond=self_cond)
    return train_step.fuse(one_step, steps_per_dispatch)(state, images, labels, key)

  train = jax.vmap(member, in_axes=(0, None, None, 0, 0))
  rep = parallel.replicated(mesh)
  return jax.jit(train, in_shardings=(rep,) * 5, out_shardings=(rep, rep), donate_argnums=(0,))


def train_keys(seeds, mesh) -> jax.Array:
  """[k] training keys, model i's the one a run with seed seeds[i] uses (state.train_key)."""
  return jax.jit(jax.vmap(state_lib.train_key), out_shardings=parallel.replicated(mesh))(
      jnp.asarray(seeds))
