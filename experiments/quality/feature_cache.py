"""The sprite feature network's cache: trained once per dataset and Recipe, then read back.

Each network lives in its own folder (cache_dir: the dataset's name and version, the network's
version and a digest of every training setting), so a network trained with other settings is
never read back as this one, and its info.json (held-out accuracies, seconds) travels with it.
"""
import dataclasses
import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments.data import dataset
from experiments.quality.features import (FEATURE_DIM, FeatureNet, Recipe, SpriteNet,
                                          class_accuracy, damage_accuracy, embed, train_params)
from experiments.runtime import files


def cache_dir(data_dir: str, dataset_name: str, recipe: Recipe) -> str:
  """One folder per dataset config (source, size, folder hash), network version and recipe."""
  return os.path.join(os.path.expanduser(data_dir), 'sprite_features',
                      f'{dataset_name}-{recipe.key()}')


def load_or_train(folder: str, train: dataset.SpriteData, test: dataset.SpriteData, *,
                  dataset_name: str, recipe: Recipe) -> FeatureNet:
  """The network cached in `folder` (see cache_dir), or a freshly trained one (then cached)."""
  labeled = train.num_classes > 0
  num_classes = train.num_classes if labeled else 4
  module = SpriteNet(num_classes, recipe.width, recipe.pool, recipe.norm)
  template = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                jnp.zeros((1,) + train.images.shape[1:])))
  if os.path.exists(os.path.join(folder, 'info.json')):
    with open(os.path.join(folder, 'params.msgpack'), 'rb') as f:
      params = flax.serialization.from_bytes(template, f.read())
    with open(os.path.join(folder, 'info.json'), encoding='utf-8') as f:
      info = json.load(f)
    return FeatureNet(jax.tree.map(jnp.asarray, params), num_classes, info['feature_scale'], info,
                      recipe.width, recipe.pool, recipe.norm)
  logging.info('Training the sprite feature network for %s (once; cached in %s).', dataset_name,
               folder)
  start = time.perf_counter()
  params = train_params(train.images, train.labels if labeled else None, num_classes, recipe)
  net = FeatureNet(params, num_classes, width=recipe.width, pool=recipe.pool, norm=recipe.norm)
  # One pass over the training sprites gives the scale and, for the class task, the accuracy
  # (15 s on 2 cores for a course-sized set's 75,000); the rotation task scores four turns of each.
  train_f, train_pred = embed(net, train.images)
  mean_sq = float(jnp.mean(jnp.sum(train_f ** 2, axis=1))) / FEATURE_DIM
  net = dataclasses.replace(net, scale=1.0 / max(mean_sq, 1e-12) ** 0.5)
  if not labeled:
    train_accuracy = class_accuracy(net, train.images, None)
  else:
    train_accuracy = float(np.mean(train_pred == train.labels)) if len(train_pred) else None
  info = {'dataset': dataset_name, 'task': 'class' if labeled else 'rotation',
          **dataclasses.asdict(recipe), 'feature_dim': FEATURE_DIM, 'feature_scale': net.scale,
          'train_accuracy': train_accuracy,
          'test_accuracy': class_accuracy(net, test.images, test.labels if labeled else None),
          'test_damage_accuracy': damage_accuracy(net, test.images, recipe.seed),
          'train_seconds': round(time.perf_counter() - start, 2), 'backend': jax.default_backend()}
  if files.is_writer():
    _write_atomically(folder, flax.serialization.to_bytes(params), info)
  return dataclasses.replace(net, info=info)


def _write_atomically(folder: str, params: bytes, info: dict) -> None:
  """Each file renamed into place, info.json last: a half-written cache is never read as
  complete, and another process reading the cache while this one rewrites it (sweep shards
  sharing a data_dir) sees the old weights or the new, never half of them."""
  files.write_bytes(os.path.join(folder, 'params.msgpack'), params)
  files.write_json(os.path.join(folder, 'info.json'), info)
