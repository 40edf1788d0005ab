"""The feature network's recipe judged without the test split: grouped k-fold cross-validation
on the training split. Each fold's network is trained on the other folds and scored two ways:
its class accuracy on the held fold, and how a perfect copier of the folds it learnt fares
against the held fold in its space (their sprites as "samples", FID ratio and recall against
the held fold's own halves, as an evaluation scores a copier against the test split, with
eval.knn, eval.repeats and eval.seed). A network that learns its training sprites by heart may
name classes well and still set the sprites it saw apart from new ones (ratio above 1): a worse
yardstick for FID and recall, which are what it is for. One JSON line: the recipe, each fold's
numbers, their means, and the seconds taken.

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

from experiments.data import dataset
from experiments.quality import features, floor
from experiments.runtime import cli, errors, logs


def folds(data: dataset.SpriteData, recipe: features.Recipe, num_folds: int = 4, *,
          knn: int, repeats: int, seed: int, block: int) -> list[dict]:
  """Per fold, groups of variants kept whole (a sprite's recolorings would otherwise be learnt
  from its twin): the held fold's class accuracy, and the copier's FID ratio, recall, the
  floor's recall and the set size they come from (knn, repeats, seed and block: eval.*)."""
  fold = (data.groups.astype(np.int64) * 2654435761 % 2**32) % num_folds  # a fixed scatter
  smallest = int(np.bincount(fold, minlength=num_folds).min())
  if smallest < 4 * (knn + 2):  # its halves must hold more than knn + 1 sprites each
    raise ValueError(f'A fold of {smallest} sprites is too small to score a copier against '
                     f'(eval.knn={knn}): use fewer --folds or a larger training split.')
  scores = []
  for f in range(num_folds):
    fit, held = fold != f, fold == f
    params = features.train_params(data.images[fit], data.labels[fit], data.num_classes, recipe)
    net = features.FeatureNet(params, data.num_classes, width=recipe.width, pool=recipe.pool,
                              norm=recipe.norm)
    fit_f, held_f = (features.embed(net, data.images[m], block)[0] for m in (fit, held))
    copier = floor.distribution_metrics(fit_f, held_f, data.groups[held], knn=knn,
                                        repeats=repeats, seed=seed, block=block)
    scores.append({'accuracy': features.class_accuracy(net, data.images[held],
                                                       data.labels[held]),
                   'copier_fid_ratio': copier['fid']['ratio'],
                   'copier_recall': copier['recall']['samples'],
                   'floor_recall': copier['recall']['floor'], 'set_size': copier['set_size']})
  return scores


def main(argv):
  del argv
  logs.quiet_libraries()
  args = flags.FLAGS
  with errors.reported():
    if args.folds < 2 or args.steps < 1 or args.width < 1:
      raise ValueError('--folds must be >= 2, --steps and --width >= 1.')
    config = args.config
    data = dataset.load(config.data, 'train')
    if data.num_classes < 2:
      raise ValueError('cross-validation scores the class head: the data needs two classes.')
    recipe = features.Recipe(steps=args.steps, seed=args.seed, width=args.width,
                             pool=args.pool, version=int(args.version))
    start = time.perf_counter()
    scores = folds(data, recipe, args.folds, knn=config.eval.knn, repeats=config.eval.repeats,
                   seed=config.eval.seed, block=config.eval.batch_size)
    accuracy = [s['accuracy'] for s in scores]
    copier = {key: [s[key] for s in scores]
              for key in ('copier_fid_ratio', 'copier_recall', 'floor_recall', 'set_size')}
    print(json.dumps({'data': config.data.source, 'sprites': len(data.images),
                      **dataclasses.asdict(recipe), 'folds': accuracy,
                      'mean': float(np.mean(accuracy)), **copier,
                      **{f'{key}_mean': _mean(values) for key, values in copier.items()},
                      'seconds': round(time.perf_counter() - start, 1)}), flush=True)


def _mean(values: list) -> float | None:
  # a FID ratio is None where the floor is 0 (held sprites all alike): no mean then
  return None if None in values else float(np.mean(values))


if __name__ == '__main__':
  # Defined here, not on import: tests import this module beside others that define --config.
  cli.define_config('Config file[:preset] (its data.* and eval.*).')
  flags.DEFINE_integer('steps', features.Recipe.steps, 'Training steps.')
  flags.DEFINE_integer('width', features.Recipe.width, 'First layer channels.')
  flags.DEFINE_enum('pool', features.Recipe.pool, ['mean_max', 'flatten'], 'Last map.')
  flags.DEFINE_enum('version', str(features.VERSION), list(map(str, features.VERSIONS)),
                    'Feature network version (3: GroupNorm, 4: EMA of the weights, 5: gray).')
  flags.DEFINE_integer('seed', 0, 'Seed of the network and its batches.')
  flags.DEFINE_integer('folds', 4, 'Folds (groups of variants kept whole).')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
