"""--mode=eval: are the sprites good, and are they new?

Draws `eval.num_samples` sprites (classes in the training split's proportions, so a perfect
model matches the data's mix) or reads `eval.samples`, then measures, in the feature space
of the project's own sprite network (experiments/quality/features.py):
  FID, KID, precision, recall  samples vs the reference split, each next to its floor: the
                               same metric between two disjoint halves of real sprites (split
                               by sprite group) at the same set size, so ratio 1 = as good as real
  conditional accuracy         the network's class of each sample vs the class asked for
  memorization (audit.py)      every sample's nearest training sprite, mirrors included
Writes <workdir>/eval/<name>.json, <name>_nearest.png and (when drawn) <name>_samples.npz, copies
the first two to <workdir>/eval.json and <workdir>/nearest.png, and prints a one-screen summary.
"""
import json
import os
import shutil
import time

import jax
import numpy as np
from absl import logging

from experiments import from_config, sample
from experiments.data import dataset
from experiments.pictures import canvas
from experiments.quality import audit, features, metrics
from experiments.runtime import checkpoints, parallel

# FID's bias grows like feature_dim / set size; below ~10 samples per dimension it dominates
# the value and moves with the set size, so such FIDs only mean something as ratios.
STABLE_FID_SET = 10 * features.FEATURE_DIM
REFERENCES = ('test', 'train')


def check_config(eval_cfg) -> None:
  """The eval keys' checks, run before training so a typo does not wait for the end."""
  e = eval_cfg
  if e.reference not in REFERENCES:
    raise ValueError(f'Unknown eval.reference {e.reference!r}; valid: {", ".join(REFERENCES)}.')
  if min(e.num_samples, e.repeats, e.knn, e.batch_size, e.feature_steps) < 1 or e.near_copy <= 0:
    raise ValueError('eval.num_samples, repeats, knn, batch_size and feature_steps must be >= 1, '
                     'and eval.near_copy > 0.')


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
  if params is None:
    step, params = sample.restore_params(config, workdir, train.num_classes, mesh)
  labels = proportional_labels(train.labels, train.num_classes, config.eval.num_samples)
  context = dataset.context(labels, train.num_classes)
  model = from_config.model(config.model, train.num_classes)
  fn = sample.make_sample_fn(model, config, mesh, frames=0)
  images, _ = sample.generate(fn, params, config.sample.seed, context, config.sample.batch_size,
                              mesh, frames=0)
  return images, labels, sample.output_name(config, step or 0), step


def read_samples(path: str, like: np.ndarray, num_classes: int):
  """(images, labels) of a samples .npz, checked against the training sprites `like`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'eval.samples={path}: no such file.')
  with np.load(path) as f:
    if 'images' not in f:
      raise ValueError(f'{path} holds no `images` array (it has: {", ".join(f.files)}); '
                       'eval reads the .npz files that --mode=sample writes.')
    images = f['images']
    labels = f['labels'] if 'labels' in f else np.full(len(images), -1, np.int32)
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f'{path}: images have shape {images.shape}; expected a non-empty '
                     f'[N, {", ".join(map(str, like.shape[1:]))}] batch of sprites.')
  if images.dtype != like.dtype or images.shape[1:] != like.shape[1:]:
    raise ValueError(f'{path}: sprites are {images.dtype} {list(images.shape[1:])}, the training '
                     f'data {like.dtype} {list(like.shape[1:])}: convert them (uint8 in [0, 255], '
                     'RGB) or set --config.data.image_size to match.')
  labels = np.asarray(labels, np.int32).reshape(-1)
  if len(labels) != len(images) or labels.max() >= num_classes:
    raise ValueError(f'{path}: labels must be one per sprite, each -1 or a class below '
                     f'{num_classes}; got {len(labels)} labels, max {labels.max()}.')
  return images, labels


def group_halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of two halves of a split with no sprite group in both (variants stay together)."""
  rng = np.random.default_rng(seed)
  unique = rng.permutation(np.unique(groups))
  counts = np.array([np.sum(groups == g) for g in unique])
  first = unique[np.cumsum(counts) <= len(groups) / 2]
  in_first = np.isin(groups, first)
  return rng.permutation(np.flatnonzero(in_first)), rng.permutation(np.flatnonzero(~in_first))


def _set_metrics(fake, real, k: int, block: int) -> dict[str, float]:
  precision, recall = metrics.precision_recall(real, fake, k, block)
  return {'fid': float(metrics.fid(fake, real)), 'kid': float(metrics.kid(fake, real, block)),
          'precision': float(precision), 'recall': float(recall)}


def distribution_metrics(sample_f, ref_f, ref_groups, eval_cfg) -> dict:
  """Each metric for samples vs one half of the reference, and for the other half vs it (the
  floor), all sets of one size h; repeated over redrawn halves (and further samples), averaged."""
  n, k, block = len(sample_f), eval_cfg.knn, eval_cfg.batch_size
  halves = [group_halves(ref_groups, eval_cfg.seed + r) for r in range(eval_cfg.repeats)]
  h = min([n] + [min(len(a), len(b)) for a, b in halves])
  if h <= k + 1:
    raise ValueError(f'Sets of {h} sprites are too few for k-NN precision/recall with '
                     f'eval.knn={k}: draw more samples or use a larger reference split.')
  order = np.random.default_rng(eval_cfg.seed).permutation(n)  # samples come sorted by class
  runs = {'samples': [], 'floor': []}
  for r, (first, second) in enumerate(halves):
    real_b = ref_f[second[:h]]
    fake = sample_f[order[np.arange(r * h, (r + 1) * h) % n]]  # disjoint while samples last
    runs['samples'].append(_set_metrics(fake, real_b, k, block))
    runs['floor'].append(_set_metrics(ref_f[first[:h]], real_b, k, block))
  out = {'set_size': h, 'repeats': len(halves)}
  for name in ('fid', 'kid', 'precision', 'recall'):
    s, f = (np.array([m[name] for m in runs[who]]) for who in ('samples', 'floor'))
    out[name] = {'samples': float(s.mean()), 'samples_std': float(s.std()),
                 'floor': float(f.mean()), 'floor_std': float(f.std()),
                 'ratio': float(s.mean() / f.mean()) if f.mean() > 0 else None}
  # KID is unbiased, so its floor is 0 up to noise and a ratio to it means nothing: read the
  # samples' KID against the floor's spread instead.
  out['kid']['ratio'] = None
  out['fid']['stable'] = h >= STABLE_FID_SET
  return out


def conditional_accuracy(predicted, labels, ref_predicted, ref_labels) -> dict:
  asked = labels >= 0
  real = ref_labels >= 0
  return {'samples': float(np.mean(predicted[asked] == labels[asked])) if asked.any() else None,
          'real_heldout': float(np.mean(ref_predicted[real] == ref_labels[real]))
                          if real.any() else None}


def _sprites(config, workdir, train, params, step):
  """(images, labels, name, step, source) to evaluate: eval.samples if set, else fresh draws."""
  path = config.eval.samples
  if path:
    images, labels = read_samples(os.path.expanduser(path), train.images, train.num_classes)
    return images, labels, os.path.splitext(os.path.basename(path))[0], step, os.path.abspath(path)
  if params is None and checkpoints.manager(workdir, 1).latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to draw samples from: train '
                            'first, point --workdir at a trained run, or pass '
                            '--config.eval.samples=<file>.npz.')
  images, labels, name, step = _draw(config, workdir, train, params, step)
  return images, labels, name, step, 'drawn'


def measure(images, labels, train, ref, heldout, net, eval_cfg) -> tuple[dict, dict]:
  """Every metric of the report, and the samples' nearest-neighbour arrays (for the picture)."""
  block = eval_cfg.batch_size
  sample_f, sample_pred = (np.asarray(a) for a in features.embed(net, images, block))
  ref_f = np.asarray(features.embed(net, ref.images, block)[0])
  held_f, held_pred = (np.asarray(a) for a in features.embed(net, heldout.images, block))
  train_f = features.embed(net, np.asarray(metrics.with_mirrors(train.images)), block)[0]
  report = distribution_metrics(sample_f, ref_f, ref.groups, eval_cfg)
  report['conditional_accuracy'] = conditional_accuracy(sample_pred, labels, held_pred,
                                                        heldout.labels)
  near = audit.nearest_training(images, sample_f, train.images, train_f, block)
  near_held = audit.nearest_training(heldout.images, held_f, train.images, train_f, block)
  report['memorization'] = audit.report(near, near_held, len(train.images), eval_cfg.near_copy)
  return report, near


def run(config, workdir: str, *, params=None, step: int | None = None,
        class_names: tuple[str, ...] | None = None) -> dict:
  """Evaluate the latest checkpoint (or `params`, or eval.samples); returns what eval.json holds."""
  del class_names  # the training split carries them; the keyword matches sample.run
  start = time.perf_counter()
  from_config.validate(config)
  e = config.eval
  check_config(e)
  train, heldout = dataset.load(config.data, 'train'), dataset.load(config.data, 'test')
  ref = heldout if e.reference == 'test' else train
  loaded = time.perf_counter()
  images, labels, name, step, source = _sprites(config, workdir, train, params, step)
  drawn = time.perf_counter()
  b = dataset.builder(config.data)  # the feature net is cached per dataset name and version
  net = features.load_or_train(config.data, f'{b.builder_config.name}-{b.version}',
                               train, heldout, steps=e.feature_steps, seed=e.feature_seed)
  trained = time.perf_counter()
  report, near = measure(images, labels, train, ref, heldout, net, e)
  report = {'step': step, 'samples': {'count': len(images), 'source': source, 'name': name},
            'reference': {'split': e.reference, 'count': len(ref.images)},
            'feature_net': net.info, **report,
            'seconds': {'data': round(loaded - start, 2), 'sampling': round(drawn - loaded, 2),
                        'feature_net': round(trained - drawn, 2),
                        'metrics': round(time.perf_counter() - trained, 2),
                        'total': round(time.perf_counter() - start, 2)}}
  report['warnings'] = caveats(report)
  if jax.process_index() == 0:
    picture = audit.nearest_picture(images, train.images, near, e.nearest_shown)
    _write(workdir, name, report, picture, (images, labels) if source == 'drawn' else None)
    print(summary(report), flush=True)
  return report


def caveats(report: dict) -> list[str]:
  out = []
  h = report['set_size']
  if not report['fid']['stable']:
    out.append(f'FID from sets of {h} sprites (< {STABLE_FID_SET} = 10 per feature dimension) is '
               'dominated by small-sample bias: read its ratio to the floor, and KID.')
  if report['reference']['split'] == 'train':
    out.append('The reference is the training split, which the feature network was trained on and '
               'a copying model reproduces: a ratio near 1 does not rule out memorization.')
  return out


def _write(workdir: str, name: str, report: dict, picture: np.ndarray, drawn) -> None:
  """The report and picture, and drawn samples as an .npz that eval.samples can read again."""
  folder = os.path.join(workdir, 'eval')
  os.makedirs(folder, exist_ok=True)
  stem = os.path.join(folder, name)
  if drawn is not None:
    np.savez_compressed(stem + '_samples.npz', images=drawn[0], labels=drawn[1])
  with open(stem + '.json.tmp', 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  os.replace(stem + '.json.tmp', stem + '.json')
  canvas.save_png(stem + '_nearest.png', picture)
  shutil.copyfile(stem + '.json', os.path.join(workdir, 'eval.json'))
  shutil.copyfile(stem + '_nearest.png', os.path.join(workdir, 'nearest.png'))
  logging.info('Wrote %s.json and %s_nearest.png', stem, stem)


def _pct(x) -> str:
  return '   n/a' if x is None else f'{100 * x:5.1f}%'


def summary(r: dict) -> str:
  """The one-screen report printed after every evaluation."""
  net, mem = r['feature_net'], r['memorization']
  lines = [f"eval of {r['samples']['name']} (step {r['step']}): {r['samples']['count']} samples vs "
           f"the {r['reference']['split']} split ({r['reference']['count']} sprites); sets of "
           f"{r['set_size']}, {r['repeats']} repeat(s)",
           f"feature net v{net['version']} ({net['task']}, {net['steps']} steps): held-out "
           f"accuracy {_pct(net['test_accuracy'])}, train {_pct(net['train_accuracy'])}",
           f"{'':22}{'samples':>18}{'floor (real/real)':>20}{'ratio':>8}"]
  for name in ('fid', 'kid', 'precision', 'recall'):
    m = r[name]
    ratio = '' if m['ratio'] is None else f"{m['ratio']:8.2f}"
    lines.append(f"{name.upper() if len(name) == 3 else name:22}"
                 f"{m['samples']:10.4f} ± {m['samples_std']:<6.4f}"
                 f"{m['floor']:12.4f} ± {m['floor_std']:<6.4f}{ratio}")
  acc = r['conditional_accuracy']
  lines.append(f"{'conditional accuracy':22}{_pct(acc['samples']):>10}{'':8}"
               f"{_pct(acc['real_heldout']):>12}  (real held-out sprites)")
  s, h = mem['samples'], mem['real_heldout']
  lines += [f"nearest training sprite (mirrors included){'samples':>14}{'held-out real':>16}",
            f"{'  exact copies':42}{_pct(s['exact_copy_rate']):>14}"
            f"{_pct(h['exact_copy_rate']):>16}",
            f"{'  near copies (pixel dist <= %g)' % mem['near_copy_threshold']:42}"
            f"{_pct(s['near_copy_rate']):>14}{_pct(h['near_copy_rate']):>16}"]
  for space in ('pixel', 'feature'):
    a, b = s[f'{space}_distance'], h[f'{space}_distance']
    lines.append(f"{'  %s distance p5 / p50' % space:42}{a['p5']:7.2f} /{a['p50']:6.2f}"
                 f"{b['p5']:9.2f} /{b['p50']:6.2f}")
  lines.append(f"  closer than 95% of held-out sprites: pixel "
               f"{_pct(mem['pixel_closer_than_heldout_p5'])}, feature "
               f"{_pct(mem['feature_closer_than_heldout_p5'])} (5% = as new as real)")
  sec = r['seconds']
  lines.append(f"cost {sec['total']:.1f} s: data {sec['data']:.1f}, sampling {sec['sampling']:.1f}, "
               f"feature net {sec['feature_net']:.1f}, metrics {sec['metrics']:.1f}")
  return '\n'.join(lines + [f'warning: {w}' for w in r['warnings']])
