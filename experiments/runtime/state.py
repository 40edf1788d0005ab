"""The train state (step, params, EMA params, optimizer state): created fresh or restored."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from experiments.runtime import checkpoints, parallel


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def init(model, tx: optax.GradientTransformation, key: jax.Array, image_size: int,
         num_classes: int) -> TrainState:
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init(key, x, jnp.zeros((1,)), jnp.zeros((1, max(num_classes, 1))))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params))


def init_key(seed: int) -> jax.Array:
  """The key of the initial parameters; the training batches use train_key(seed)."""
  return jax.random.fold_in(jax.random.key(seed), 0)


def train_key(seed: int) -> jax.Array:
  """The key of the training batches: step k uses fold_in(train_key(seed), k)."""
  return jax.random.fold_in(jax.random.key(seed), 1)


def create(*, model, tx, seed: int, image_size: int, num_classes: int, mesh) -> TrainState:
  """Fresh parameters, created already replicated over `mesh` (never whole on one device first)."""
  make = lambda: init(model, tx, init_key(seed), image_size, num_classes)
  return jax.jit(make, out_shardings=parallel.replicated(mesh))()


def abstract_state(*, model, tx, seed: int, image_size: int, num_classes: int, mesh):
  """The state's shapes and dtypes, replicated over `mesh`: what a checkpoint restores into."""
  rep = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
      jax.eval_shape(lambda: init(model, tx, init_key(seed), image_size, num_classes)))


def create_or_restore(*, model, tx, seed: int, image_size: int, num_classes: int, mesh, mngr,
                      must_exist: bool = False, set_aside: bool = False) -> TrainState | None:
  """The latest checkpoint of `mngr` that passes its checks, restored replicated over `mesh`, or
  else `create`'s fresh state; None instead when `must_exist` and there is no checkpoint.
  `set_aside`: move damaged newer checkpoints out of the way (see checkpoints.restore_latest)."""
  abstract = abstract_state(model=model, tx=tx, seed=seed, image_size=image_size,
                            num_classes=num_classes, mesh=mesh)
  state = checkpoints.restore_latest(mngr, abstract, set_aside=set_aside)
  if state is not None or must_exist:
    return state
  return create(model=model, tx=tx, seed=seed, image_size=image_size, num_classes=num_classes,
                mesh=mesh)


def ema_decay(step: jax.Array, batch_size: int, halflife_kimg: float, rampup: float) -> jax.Array:
  """EMA decay per step for a half-life counted in images (EDM), ramped up early in training.

  The half-life is min(halflife_kimg * 1000, rampup * images seen), so the average is
  useful after a few hundred steps yet long-horizon later; it does not depend on batch size.
  """
  seen = (step.astype(jnp.float32) + 1) * batch_size
  halflife = halflife_kimg * 1000.0
  # jnp.where, not `if`: rampup may be traced (one value per model in runtime/multi_train.py).
  halflife = jnp.where(rampup > 0, jnp.minimum(halflife, seen * rampup), halflife)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
