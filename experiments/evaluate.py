"""--mode=eval: are the sprites good, and are they new?

Draws `eval.num_samples` sprites (classes in the training split's proportions, so a perfect
model matches the data's mix) or reads `eval.samples`, then measures, in the feature space
of the project's own sprite network (experiments/quality/features.py):
  FID, KID, precision, recall  samples vs the reference split, each next to its floor: the
                               same metric between two disjoint halves of real sprites (split
                               by sprite group) at the same set size, so ratio 1 = as good as real
  conditional accuracy         the network's class of each sample vs the class asked for
  grain (grain.py)             in pixels, not features: how much of the change from pixel to
                               pixel is noise rather than edges, vs real held-out sprites
  color use (colors.py)        in pixels: the samples' mix of the training sprites' colors vs
                               real held-out sprites', and how few colors carry most pixels
  memorization (audit.py)      every sample's nearest training sprite, mirrors included
Writes <workdir>/eval/<name>.json, <name>_nearest.png and (when drawn) <name>_samples.npz, copies
the first two to <workdir>/eval.json and <workdir>/nearest.png, and prints a one-screen summary.
"""
import os
import shutil
import time
import zipfile
import zlib

import numpy as np
from absl import logging

from diffusion import registry
from experiments import from_config, sample
from experiments.data import dataset
from experiments.pictures import canvas
from experiments.quality import audit, colors, feature_cache, features, floor, grain, metrics
from experiments.quality import report as report_lib
from experiments.runtime import checkpoints, drawing, files, hosts, parallel, refiner, trained_with

REFERENCES = ('test', 'train')


def check_config(eval_cfg) -> None:
  """The eval keys' checks, run before training so a typo does not wait for the end."""
  registry.check(eval_cfg.reference, REFERENCES, 'eval.reference')
  counts = (eval_cfg.num_samples, eval_cfg.repeats, eval_cfg.knn, eval_cfg.batch_size,
            eval_cfg.feature_steps)
  if min(counts) < 1 or eval_cfg.near_copy <= 0:
    raise ValueError('eval.num_samples, repeats, knn, batch_size and feature_steps must be >= 1, '
                     'and eval.near_copy > 0.')


def check_reference(config, ref) -> None:
  """The sets compared must hold more than eval.knn + 1 sprites for k-NN precision and recall:
  said before training or drawing, not after (`ref`: the eval.reference split)."""
  e = config.eval
  n = len(ref.images) if e.samples else e.num_samples  # a samples file's count is read later
  halves = floor.halves_of(ref.groups, e.repeats, e.seed)
  h = floor.set_size(halves, n)
  if h > e.knn + 1:
    return
  if h < floor.set_size(halves, len(ref.images)):  # the samples are fewer than a half
    fix = f'Raise eval.num_samples={n}'
  elif e.reference == 'test':
    fix = (f'Raise data.test_fraction={config.data.test_fraction:g} (the dataset is built again, '
           'once) or add sprites')
  else:
    fix = 'Add sprites'
  most = '' if e.samples else f', and at most eval.num_samples={e.num_samples}'
  raise ValueError(
      f'The evaluation compares sets of {h} sprites (half of the {e.reference} split\'s '
      f'{len(ref.images)}, by groups of variants{most}): k-NN precision and recall with '
      f'eval.knn={e.knn} need at least {e.knn + 2}. {fix}, or train without evaluating '
      '(--config.eval.at_end=False --config.train.eval_every=0).')


def proportional_labels(labels: np.ndarray, num_classes: int, n: int) -> np.ndarray:
  """n labels in the proportions of `labels` (largest remainders), sorted; -1s if no classes."""
  if num_classes == 0:
    return np.full(n, -1, np.int32)
  share = np.bincount(labels, minlength=num_classes) / max(len(labels), 1) * n
  counts = np.floor(share).astype(int)
  counts[np.argsort(counts - share)[:n - counts.sum()]] += 1
  return np.repeat(np.arange(num_classes), counts).astype(np.int32)


def _draw(config, workdir, train, params, step):
  """(images, labels, name, step) sampled with the configured sampler, no GIF."""
  mesh = parallel.make_mesh()
  step, params = drawing.weights(workdir, mesh, config.sample, params=params, step=step,
                                 **from_config.state_kwargs(config, train.num_classes))
  labels = proportional_labels(train.labels, train.num_classes, config.eval.num_samples)
  context = dataset.context(labels, train.num_classes)
  model = from_config.model(config.model, train.num_classes)
  fn = drawing.make_sample_fn(model, from_config.sampling(config), mesh, frames=0)
  images, _ = drawing.generate(fn, params, config.sample.seed, context, config.sample.batch_size,
                               mesh, frames=0)
  images = sample.snap_to_palette(images, train.images, config.sample.palette)
  name = sample.output_name(config, step or 0, drawing.guide_step(workdir, config.sample),
                            refiner.steps_for(workdir, step, config.sample))
  return images, labels, name, step


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of a .npz file; any unreadable file is a ValueError naming it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'eval.samples={path}: no such file.')
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise ValueError('a single .npy array')
    with loaded:
      return {name: loaded[name] for name in loaded.files}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(f'eval.samples={path}: not a readable .npz of sprites ({e}); eval reads the '
                     '.npz files that --mode=sample writes.') from e


def read_samples(path: str, like: np.ndarray, num_classes: int, class_names=None):
  """(images, labels) of a samples .npz, checked against the training sprites `like` (and their
  class names, where the file records its own: --mode=sample writes them)."""
  arrays = _read_npz(path)
  if 'images' not in arrays:
    raise ValueError(f'{path} holds no `images` array (it has: {", ".join(arrays) or "nothing"}); '
                     'eval reads the .npz files that --mode=sample writes.')
  images, labels = arrays['images'], arrays.get('labels')
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f'{path}: images have shape {images.shape}; expected a non-empty '
                     f'[N, {", ".join(map(str, like.shape[1:]))}] batch of sprites.')
  if images.dtype != like.dtype or images.shape[1:] != like.shape[1:]:
    raise ValueError(f'{path}: sprites are {images.dtype} {list(images.shape[1:])}, the training '
                     f'data {like.dtype} {list(like.shape[1:])}: convert them (uint8 in [0, 255], '
                     'RGB) or set --config.data.image_size to match.')
  drawn_for = [str(n) for n in arrays.get('class_names', np.zeros(0, str))]
  if class_names is not None and 'class_names' in arrays and drawn_for != list(class_names):
    raise ValueError(f'{path} was drawn for the classes {", ".join(drawn_for) or "(none)"}, but '
                     f'this config\'s data has {", ".join(class_names) or "(none)"}: pass the '
                     'data.* flags of the run that drew it (its labels index its own classes).')
  labels = np.full(len(images), -1, np.int32) if labels is None else labels
  if (labels.ndim != 1 or len(labels) != len(images)
      or not np.issubdtype(labels.dtype, np.integer)
      or np.any((labels < -1) | (labels >= num_classes))):
    raise ValueError(f'{path}: labels must be integers, one per sprite, each -1 or a class below '
                     f'{num_classes}; got {labels.dtype} {list(labels.shape)} for {len(images)} '
                     'sprites.')
  return images, labels.astype(np.int32)


def _sprites(config, workdir, train, params, step):
  """(images, labels, name, step, source) to evaluate: eval.samples if set, else fresh draws."""
  path = config.eval.samples
  if path:
    images, labels = read_samples(os.path.expanduser(path), train.images, train.num_classes,
                                  train.class_names)
    # '_file': evaluating a drawn set's own .npz must not overwrite the evaluation that drew it
    name = os.path.splitext(os.path.basename(path))[0] + '_file'
    return images, labels, name, step, os.path.abspath(path)
  if params is None and checkpoints.manager(workdir, 1, create=False).latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to draw samples from: train '
                            'first, point --workdir at a trained run, or pass '
                            '--config.eval.samples=<file>.npz.')
  images, labels, name, step = _draw(config, workdir, train, params, step)
  return images, labels, name, step, 'drawn'


def measure(images, labels, train, ref, heldout, net, *, knn: int, repeats: int, seed: int,
            block: int, near_copy: float) -> tuple[dict, dict]:
  """Every metric of the report, and the samples' nearest-neighbor arrays (for the picture)."""
  sample_f, sample_pred = (np.asarray(a) for a in features.embed(net, images, block))
  held_f, held_pred = (np.asarray(a) for a in features.embed(net, heldout.images, block))
  ref_f = held_f if ref is heldout else np.asarray(features.embed(net, ref.images, block)[0])
  train_f = features.embed(net, np.asarray(metrics.with_mirrors(train.images)), block)[0]
  report = floor.distribution_metrics(sample_f, ref_f, ref.groups, knn=knn, repeats=repeats,
                                      seed=seed, block=block)
  report['conditional_accuracy'] = floor.conditional_accuracy(sample_pred, labels, held_pred,
                                                              heldout.labels)
  report['grain'] = grain.report(images, heldout.images)
  report['colors'] = colors.report(images, heldout.images, train.images)
  near = audit.nearest_training(images, sample_f, train.images, train_f, block)
  rows = audit.baseline_rows(len(heldout.images))
  near_held = audit.nearest_training(heldout.images[rows], held_f[rows], train.images, train_f,
                                     block)
  report['memorization'] = audit.report(near, near_held, len(train.images), near_copy)
  return report, near


def feature_recipe(eval_cfg) -> features.Recipe:
  """The feature network eval.* asks for (its cache key)."""
  return features.Recipe(steps=eval_cfg.feature_steps, seed=eval_cfg.feature_seed,
                         width=eval_cfg.feature_width, version=eval_cfg.feature_version)


def feature_net(config, train, heldout) -> features.FeatureNet:
  """The feature network eval.* asks for, cached per dataset name and version (trained once)."""
  b = dataset.builder(config.data)
  name_version = f'{b.builder_config.name}-{b.version}'
  recipe = feature_recipe(config.eval)
  return feature_cache.load_or_train(
      feature_cache.cache_dir(config.data.data_dir, name_version, recipe), train, heldout,
      dataset_name=name_version, recipe=recipe)


def run(config, workdir: str, *, params=None, step: int | None = None,
        class_names: tuple[str, ...] | None = None) -> dict | None:
  """Evaluate the latest checkpoint (or `params`, or eval.samples); returns what eval.json holds
  (None in processes other than 0: they help draw, then wait while process 0 measures)."""
  del class_names  # the training split carries them; the keyword matches sample.run
  start = time.perf_counter()
  from_config.validate(config)
  eval_cfg = config.eval
  check_config(eval_cfg)
  train, heldout = dataset.load(config.data, 'train'), dataset.load(config.data, 'test')
  if not eval_cfg.samples:  # drawn by this workdir's model: judge it against its own held-out sprites
    dataset.check_trained_on(workdir, train, 'the held-out sprites may include ones it learnt')
    if params is None:
      trained_with.check(config, workdir, trained_with.DRAWING, 'evaluating it')
  ref = heldout if eval_cfg.reference == 'test' else train
  check_reference(config, ref)
  loaded = time.perf_counter()
  images, labels, name, step, source = _sprites(config, workdir, train, params, step)
  drawn = time.perf_counter()
  if not files.is_writer():  # all that follows is host-local work on the gathered sprites
    hosts.barrier('evaluation written')
    return None
  with hosts.then_barrier('evaluation written'):  # reached even if process 0 fails on the way
    net = feature_net(config, train, heldout)
    trained = time.perf_counter()
    report, near = measure(images, labels, train, ref, heldout, net, knn=eval_cfg.knn,
                           repeats=eval_cfg.repeats, seed=eval_cfg.seed, block=eval_cfg.batch_size,
                           near_copy=eval_cfg.near_copy)
    report = {'step': step, 'samples': {'count': len(images), 'source': source, 'name': name},
              'reference': {'split': eval_cfg.reference, 'count': len(ref.images)},
              'feature_net': net.info, **report,
              'seconds': {'data': round(loaded - start, 2), 'sampling': round(drawn - loaded, 2),
                          'feature_net': round(trained - drawn, 2),
                          'metrics': round(time.perf_counter() - trained, 2),
                          'total': round(time.perf_counter() - start, 2)}}
    report['warnings'] = report_lib.caveats(report)
    picture = audit.nearest_picture(images, train.images, near, eval_cfg.nearest_shown)
    drawn = (images, labels, train.class_names) if source == 'drawn' else None
    _write(workdir, name, report, picture, drawn)
    print(report_lib.summary(report), flush=True)
    return report


def _write(workdir: str, name: str, report: dict, picture: np.ndarray, drawn) -> None:
  """The report and picture, and drawn samples (images, labels, class names) as an .npz that
  eval.samples can read again."""
  folder = os.path.join(workdir, 'eval')
  os.makedirs(folder, exist_ok=True)
  stem = os.path.join(folder, name)
  if drawn is not None:
    np.savez_compressed(stem + '_samples.npz', images=drawn[0], labels=drawn[1],
                        class_names=np.asarray(drawn[2], dtype=str))
  files.write_json(stem + '.json', report)
  canvas.save_png(stem + '_nearest.png', picture)
  shutil.copyfile(stem + '.json', os.path.join(workdir, 'eval.json'))
  shutil.copyfile(stem + '_nearest.png', os.path.join(workdir, 'nearest.png'))
  logging.info('Wrote %s.json and %s_nearest.png', stem, stem)


