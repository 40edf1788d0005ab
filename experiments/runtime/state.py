"""The train state (step, params, EMA params, optimizer state), its creation and its shapes."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def learning_rate(train_cfg):
  t = train_cfg
  decay_steps = max(t.steps - t.warmup_steps, 1)
  if t.lr_schedule == 'constant':
    main = optax.constant_schedule(t.learning_rate)
  elif t.lr_schedule == 'linear':
    main = optax.linear_schedule(t.learning_rate, 0.0, decay_steps)
  else:
    main = optax.cosine_decay_schedule(t.learning_rate, decay_steps)
  if t.warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
  return optax.join_schedules([warmup, main], [t.warmup_steps])


def optimizer(train_cfg) -> optax.GradientTransformation:
  lr = learning_rate(train_cfg)
  adam = (optax.adamw(lr, weight_decay=train_cfg.weight_decay) if train_cfg.weight_decay > 0
          else optax.adam(lr))
  if train_cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adam)
  return adam


def init(model, tx: optax.GradientTransformation, key: jax.Array, image_size: int,
         num_classes: int) -> TrainState:
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init(key, x, jnp.zeros((1,)), jnp.zeros((1, max(num_classes, 1))))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params))


def ema_decay(step: jax.Array, batch_size: int, halflife_kimg: float, rampup: float) -> jax.Array:
  """EMA decay per step for a half-life counted in images (EDM), ramped up early in training.

  The half-life is min(halflife_kimg * 1000, rampup * images seen), so the average is
  useful after a few hundred steps yet long-horizon later; it does not depend on batch size.
  """
  seen = (step.astype(jnp.float32) + 1) * batch_size
  halflife = halflife_kimg * 1000.0
  if rampup > 0:
    halflife = jnp.minimum(halflife, seen * rampup)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
