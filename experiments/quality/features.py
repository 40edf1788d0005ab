"""The sprite feature network: the space where FID, KID, precision/recall and accuracy live.

Inception features mean nothing at 16x16 (and its weights cannot be downloaded everywhere), so
the project trains its own small CNN on the `train` split of each dataset, with two heads on one
64-d feature: the sprite's class, and whether (and how) the sprite was damaged - Gaussian noise,
speckles of random color, blur. A classifier alone learns to ignore such damage, so its space
would call a noisy half-trained model's mush real (Heusel et al. 2017 showed that FID must rise
with exactly these disturbances); the damage head makes the space see them. The network is
deterministic given its seed (batches, augmentations and damage from fold_in(key, step)), cached
on disk per dataset and Recipe by feature_cache (its version and every training setting are in
the folder's name), and its held-out class accuracy is stored with it.

A dataset without classes trains the same network to tell the four rotations of a sprite
apart (Gidaris et al. 2018), a label-free task that still needs shape features.
"""
import dataclasses
import functools
import hashlib
import json
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.data import dataset

VERSION = 2  # the default; a new version when the network, its training or its inputs change


class Version(NamedTuple):
  """What a version changes in version 2's network and training."""
  norm: bool = False       # a GroupNorm after each convolution
  ema_decay: float = 0.0   # keep a running average of the weights, per step, and embed with it
  gray: float = 0.0        # the share of training sprites shown in gray (their colors averaged)


# Versions 3-5 are switches (eval.feature_version), not the default; docs/yardstick.md has their
# numbers. 3 names more held-out emoji under cross-validation, but its space sets the training
# sprites apart from held-out ones (a copier scores 1.2x the floor's FID); 4 names as many as 2
# and sets them apart a little less, but is gentler on DawnLike's models, bad and good; 5 shows
# a fifth of its training sprites in gray, so that a class rests on shape as well as color: 2
# points more of DawnLike's test split named, as many emoji, 5 fewer OpenMoji, and on the test
# split the copier set apart as by 3.
# An entry reaches the cache key only through its number: change one and make a new version.
VERSIONS = {2: Version(), 3: Version(norm=True), 4: Version(ema_decay=0.999),
            5: Version(gray=0.2)}
FEATURE_DIM = 64  # small on purpose: FID's bias grows with dim / set size (Chong & Forsyth 2020)
DAMAGES = ('clean', 'noise', 'speckle', 'blur')  # the damage head's classes
TEXTURE_CHANNELS = 16  # first-layer channels whose mean and spread join the feature


class SpriteNet(nn.Module):
  """Three conv stages (16 -> 8 -> 4 pixels). The feature joins deep dimensions (the mean and the
  maximum of the last map over the sprite) with the mean and spread of up to 16 first-layer
  channels over the sprite: pixel-level texture that the deep half learns to ignore, and that mush
  is made of. pool='flatten' keeps the last map's layout instead (version 1's network, trained
  1,000 steps at width 16); pooling, width 32 and 3,000 steps name held-out classes more often
  (cross_validate.py; docs/yardstick.md has the numbers and the commands), and on
  emoji so does a GroupNorm after every convolution (norm, version 3)."""
  num_classes: int
  width: int = 32
  pool: str = 'mean_max'  # or 'flatten'
  norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(features [B, FEATURE_DIM], class logits, damage logits [B, len(DAMAGES)])."""
    texture = []
    for i, mult in enumerate((1, 2, 4)):
      x = nn.gelu(self._norm(nn.Conv(self.width * mult, (3, 3))(x)))
      if i == 0:
        first = x[..., :TEXTURE_CHANNELS]
        texture = [jnp.mean(first, axis=(1, 2)), jnp.std(first, axis=(1, 2))]
      x = nn.gelu(self._norm(nn.Conv(self.width * mult, (3, 3), strides=2 if i < 2 else 1)(x)))
    pooled = (x.reshape(x.shape[0], -1) if self.pool == 'flatten' else
              jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=1))
    deep = nn.relu(nn.Dense(FEATURE_DIM - 2 * texture[0].shape[-1])(pooled))
    features = jnp.concatenate([deep] + texture, axis=1)
    return features, nn.Dense(self.num_classes)(features), nn.Dense(len(DAMAGES))(features)

  def _norm(self, x: jax.Array) -> jax.Array:
    # 8 groups where the width allows: eval.feature_width need not be a multiple of 8
    return nn.GroupNorm(math.gcd(8, x.shape[-1]))(x) if self.norm else x


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything the trained network depends on besides the data: changing any of it retrains."""
  steps: int = 3000
  seed: int = 0
  width: int = 32
  batch_size: int = 64
  learning_rate: float = 2e-3
  pool: str = 'mean_max'
  version: int = VERSION

  def __post_init__(self):
    if self.version not in VERSIONS:
      raise ValueError(f'feature network version {self.version}: one of {sorted(VERSIONS)} exists.')

  @property
  def norm(self) -> bool:
    return VERSIONS[self.version].norm

  @property
  def ema_decay(self) -> float:
    return VERSIONS[self.version].ema_decay

  @property
  def gray(self) -> float:
    return VERSIONS[self.version].gray

  def key(self) -> str:
    """A folder-name key: readable version, steps and seed, plus a digest of every field."""
    fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
    digest = hashlib.sha256(fields.encode()).hexdigest()[:8]
    return f'v{self.version}-steps{self.steps}-seed{self.seed}-{digest}'


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  params: dict
  num_classes: int
  scale: float = 1.0  # makes the mean of |f|^2 / FEATURE_DIM over training sprites 1: KID's
                      # cubic kernel (x.y / D + 1)^3 then sees values near 1, as with Inception
  info: dict = dataclasses.field(default_factory=dict)  # version, dataset, accuracies, seconds
  width: int = 32
  pool: str = 'mean_max'
  norm: bool = False


def _rotate(images: jax.Array, k: jax.Array) -> jax.Array:
  return jax.vmap(lambda x, r: jax.lax.switch(
      r, [lambda y, i=i: jnp.rot90(y, i, axes=(0, 1)) for i in range(4)], x))(images, k)


def _augment(key: jax.Array, x: jax.Array) -> jax.Array:
  """Random mirror and a shift of up to one pixel (white comes in): sprites' own variations."""
  flip, dy, dx = jax.random.split(key, 3)
  n = x.shape[0]
  x = jnp.where(jax.random.bernoulli(flip, 0.5, (n, 1, 1, 1)), x[:, :, ::-1], x)
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
  oy, ox = jax.random.randint(dy, (n,), 0, 3), jax.random.randint(dx, (n,), 0, 3)
  size = x.shape[1]
  return jax.vmap(lambda im, a, b: jax.lax.dynamic_slice(im, (a, b, 0), (size, size, 3)))(
      padded, oy, ox)


def _to_gray(key: jax.Array, x: jax.Array, share: float) -> jax.Array:
  """A random `share` of the sprites with each pixel's colors averaged (white stays white)."""
  gray = jnp.broadcast_to(jnp.mean(x, axis=-1, keepdims=True), x.shape)
  return jnp.where(jax.random.bernoulli(key, share, (x.shape[0], 1, 1, 1)), gray, x)


def _targets(key, images, labels, rotation: bool):
  if not rotation:
    return images, labels
  k = jax.random.randint(key, (images.shape[0],), 0, 4)
  return _rotate(images, k), k


def _box_blur(x: jax.Array) -> jax.Array:
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  s = x.shape[1]
  return sum(p[:, i:i + s, j:j + s] for i in range(3) for j in range(3)) / 9.0


def damage(key: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(damaged x, DAMAGES index): half clean, the rest noised (sigma 0.05..0.5), speckled (3..30%
  of pixels a random color) or blurred (a 3x3 box mixed in at 50..100%), at random strengths."""
  kind_key, amount_key, noise_key, mask_key, colour_key = jax.random.split(key, 5)
  n = x.shape[0]
  kind = jnp.where(jax.random.bernoulli(kind_key, 0.5, (n,)), 0,
                   jax.random.randint(jax.random.fold_in(kind_key, 1), (n,), 1, len(DAMAGES)))
  u = jax.random.uniform(amount_key, (n, 1, 1, 1))
  noised = jnp.clip(x + (0.05 + 0.45 * u) * jax.random.normal(noise_key, x.shape), -1, 1)
  mask = jax.random.uniform(mask_key, x.shape[:3] + (1,)) < 0.03 + 0.27 * u
  speckled = jnp.where(mask, jax.random.uniform(colour_key, x.shape, minval=-1, maxval=1), x)
  blurred = x + (0.5 + 0.5 * u) * (_box_blur(x) - x)
  which = [kind[:, None, None, None] == k for k in (1, 2, 3)]
  out = jnp.select(which, [noised, speckled, blurred], x)
  return out, kind


def train_params(images: np.ndarray, labels: np.ndarray, num_classes: int, recipe: Recipe):
  """Parameters of SpriteNet trained on uint8 sprites; labels None -> the rotation task."""
  rotation = labels is None
  net = SpriteNet(4 if rotation else num_classes, recipe.width, recipe.pool, recipe.norm)
  key, steps, batch_size = jax.random.key(recipe.seed), recipe.steps, recipe.batch_size
  tx = optax.adamw(optax.cosine_onecycle_schedule(steps, recipe.learning_rate), weight_decay=1e-3)
  x_all = jnp.asarray(dataset.to_model(images))
  y_all = jnp.zeros(len(images), jnp.int32) if rotation else jnp.asarray(labels, jnp.int32)

  def loss_fn(params, x, y, kind):
    _, logits, damage_logits = net.apply(params, x)
    clean = (kind == 0).astype(jnp.float32)  # the class of a damaged sprite may be unrecognizable
    class_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    damage_loss = optax.softmax_cross_entropy_with_integer_labels(damage_logits, kind)
    return jnp.sum(class_loss * clean) / jnp.maximum(jnp.sum(clean), 1.0) + damage_loss.mean()

  decay = recipe.ema_decay

  @jax.jit
  def step(params, opt_state, average, i):
    k = jax.random.fold_in(jax.random.fold_in(key, 1), i)
    idx = jax.random.randint(jax.random.fold_in(k, 0), (batch_size,), 0, x_all.shape[0])
    x = _augment(jax.random.fold_in(k, 1), x_all[idx])
    if recipe.gray:
      x = _to_gray(jax.random.fold_in(k, 4), x, recipe.gray)
    x, y = _targets(jax.random.fold_in(k, 2), x, y_all[idx], rotation)
    x, kind = damage(jax.random.fold_in(k, 3), x)
    grads = jax.grad(loss_fn)(params, x, y, kind)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if decay:  # from the initial weights: 0.999 leaves them 5% after the default 3,000 steps
      average = jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)
    else:
      average = params
    return params, opt_state, average

  # A Python loop, not fori_loop: XLA:CPU runs convolutions inside a while loop ~20x slower.
  params = jax.jit(net.init)(jax.random.fold_in(key, 0), x_all[:1])
  opt_state, average = tx.init(params), params
  for i in range(steps):
    params, opt_state, average = step(params, opt_state, average, i)
  return average


@functools.partial(jax.jit, static_argnames=('num_classes', 'width', 'pool', 'norm'))
def _forward(params, images, num_classes: int, width: int, pool: str, norm: bool):
  net = SpriteNet(num_classes, width, pool, norm)
  features, logits, damage_logits = net.apply(params, dataset.to_model(images))
  return features, jnp.argmax(logits, axis=-1), jnp.argmax(damage_logits, axis=-1)


def embed(net: FeatureNet, images: np.ndarray, batch_size: int = 1024):
  """(features float32 [N, FEATURE_DIM], predicted class int [N]) of uint8 sprites.

  Every call runs blocks of exactly batch_size (the last one padded), so one compilation
  serves samples, reference and training sprites alike.
  """
  feats, preds = [], []
  for start in range(0, len(images), batch_size):
    blk = np.asarray(images[start:start + batch_size])
    padded = np.pad(blk, ((0, batch_size - len(blk)),) + ((0, 0),) * 3)
    f, p, _ = _forward(net.params, jnp.asarray(padded), net.num_classes, net.width, net.pool,
                       net.norm)
    feats.append(np.asarray(f[:len(blk)]) * np.float32(net.scale))
    preds.append(np.asarray(p[:len(blk)]))
  if not feats:
    return np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0,), np.int32)
  return np.concatenate(feats), np.concatenate(preds)


def class_accuracy(net: FeatureNet, images: np.ndarray, labels: np.ndarray | None) -> float | None:
  if len(images) == 0:
    return None
  if labels is None:  # the rotation task: score all four rotations of every sprite
    k = np.repeat(np.arange(4), len(images))
    images = np.asarray(_rotate(jnp.asarray(np.tile(images, (4, 1, 1, 1))), jnp.asarray(k)))
    labels = k
  return float(np.mean(np.asarray(embed(net, images)[1]) == labels))


def damage_accuracy(net: FeatureNet, images: np.ndarray, seed: int) -> float | None:
  """How often the damage head names the damage (or its absence) of damaged held-out sprites."""
  if len(images) == 0:
    return None
  x, kind = damage(jax.random.key(seed), jnp.asarray(dataset.to_model(images)))
  predicted = _forward(net.params, jnp.asarray(dataset.to_uint8(x)), net.num_classes,
                       net.width, net.pool, net.norm)[2]
  return float(np.mean(np.asarray(predicted) == np.asarray(kind)))
