"""The feature network's recipe judged without the test split: grouped k-fold cross-validation
on the training split (features.cross_validate). One JSON line: the recipe, each fold's held-out
class accuracy, their mean, and the seconds it took.

  python -m experiments.quality.cross_validate --config=configs/sprites.py:cpu
  python -m experiments.quality.cross_validate --config=configs/sprites.py:cpu --version=3
  python -m experiments.quality.cross_validate --config=configs/sprites.py:cpu \\
      --steps=1000 --width=16 --pool=flatten            # version 1's network
"""
import dataclasses
import json
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.data import dataset
from experiments.quality import features
from experiments.runtime import errors, logs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:preset] (its data.*).')
_STEPS = flags.DEFINE_integer('steps', features.Recipe.steps, 'Training steps.')
_WIDTH = flags.DEFINE_integer('width', features.Recipe.width, 'First layer channels.')
_POOL = flags.DEFINE_enum('pool', features.Recipe.pool, ['mean_max', 'flatten'], 'Last map.')
_VERSION = flags.DEFINE_enum('version', str(features.VERSION), list(map(str, features.NORM)),
                             'Feature network version (3: GroupNorm).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the network and its batches.')
_FOLDS = flags.DEFINE_integer('folds', 4, 'Folds (groups of variants kept whole).')


def main(argv):
  del argv
  logs.quiet_libraries()
  with errors.reported():
    if _FOLDS.value < 2 or _STEPS.value < 1 or _WIDTH.value < 1:
      raise ValueError('--folds must be >= 2, --steps and --width >= 1.')
    data = dataset.load(_CONFIG.value.data, 'train')
    if data.num_classes < 2:
      raise ValueError('cross-validation scores the class head: the data needs two classes.')
    recipe = features.Recipe(steps=_STEPS.value, seed=_SEED.value, width=_WIDTH.value,
                             pool=_POOL.value, version=int(_VERSION.value))
    start = time.perf_counter()
    accuracies = features.cross_validate(data, recipe, _FOLDS.value)
    print(json.dumps({'data': _CONFIG.value.data.source, 'sprites': len(data.images),
                      **dataclasses.asdict(recipe), 'folds': accuracies,
                      'mean': float(np.mean(accuracies)),
                      'seconds': round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
