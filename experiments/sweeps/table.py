"""The sweep's numbers: one record per run from its eval.json, then per point the mean and a 95%
Student-t interval over seeds, and whether it can be told apart from the baseline point.

A point is `within noise` of the baseline when their intervals overlap: a conservative test (two
intervals can overlap although the means differ at the 5% level), so `different` is the claim
to trust, and `within noise` says more seeds are needed before calling it either way.
"""
import csv
import dataclasses
import io
import math
import os

import numpy as np
from scipy import stats

from experiments import evaluate, sample
from experiments.runtime import files
from experiments.sweeps import plan, training

# key, label (with the better direction), the eval.json path it is read from
METRICS = (('fid', 'FID ↓', ('fid', 'samples')),
           ('fid_ratio', 'FID / floor ↓', ('fid', 'ratio')),
           ('kid', 'KID ↓', ('kid', 'samples')),
           ('precision', 'precision ↑', ('precision', 'samples')),
           ('recall', 'recall ↑', ('recall', 'samples')),
           ('cond_acc', 'cond. accuracy ↑', ('conditional_accuracy', 'samples')),
           ('grain', 'grain ↓', ('grain', 'samples')),
           ('color_distance', 'color mix dist. ↓', ('colors', 'distance', 'samples')),
           ('near_copy', 'near copies ↓', ('memorization', 'samples', 'near_copy_rate')),
           ('exact_copy', 'exact copies ↓', ('memorization', 'samples', 'exact_copy_rate')))
COSTS = ('train_minutes', 'eval_minutes', 'images_seen')


def eval_path(run: plan.Run) -> str:
  """The evaluation a finished run has: its sampling settings at its last training step."""
  name = sample.output_name(run.config, run.config.train.steps)
  return os.path.join(run.workdir, 'eval', name + '.json')


def evaluated(run: plan.Run) -> dict | None:
  """The run's evaluation, if it exists and was measured in the feature space its config names
  now: numbers from another feature network (another version or recipe) are not
  comparable, so such a run is evaluated again instead of joining the table."""
  report = files.read_json(eval_path(run))
  recorded = report.get('feature_net', {})
  wanted = dataclasses.asdict(evaluate.feature_recipe(run.config.eval))
  if not report or any(recorded.get(k) != v for k, v in wanted.items()):
    return None
  return report


def record(run: plan.Run) -> dict:
  """The run's numbers from its evaluation (none before it is evaluated) and its costs."""
  out = {'point': run.point, 'seed': run.seed, 'workdir': run.workdir, 'eval': eval_path(run)}
  diverged = training.diverged_at(run.workdir)
  if diverged is not None:
    out['diverged'] = diverged
  report = None if diverged is not None else evaluated(run)
  if report is None:
    return out
  for key, _, where in METRICS:
    value = report
    for part in where:  # None where an older evaluation lacks the metric
      value = value.get(part) if isinstance(value, dict) else None
    out[key] = value
  out['samples'] = report['samples']['count']
  out['images_seen'] = report['step'] * run.config.train.batch_size
  out['eval_minutes'] = report['seconds']['total'] / 60
  if os.path.exists(os.path.join(run.workdir, training.TIME_FILE)):
    out['train_minutes'] = training.recorded_seconds(run.workdir) / 60
  return out


def interval(values) -> tuple[float, float]:
  """(mean, half-width of the 95% Student-t interval); the half-width is nan below 2 values."""
  values = np.asarray(values, np.float64)
  if len(values) == 0:
    return math.nan, math.nan
  if len(values) < 2:
    return float(values[0]), math.nan
  half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  return float(values.mean()), float(half)


def compare(mean, half, base_mean, base_half) -> str:
  if any(math.isnan(v) for v in (mean, half, base_mean, base_half)):
    return ''
  return 'within noise' if abs(mean - base_mean) <= half + base_half else 'different'


def summarize(records: list, sweep: plan.Sweep) -> list[dict]:
  """One row per point: its finished seeds, and per metric mean, ci95, values, vs_baseline."""
  rows = []
  for p, overrides in enumerate(sweep.points):
    mine = [r for r in records if r['point'] == p and 'fid' in r]
    row = {'point': p, 'name': plan.point_name(overrides), 'overrides': overrides,
           'baseline': p == sweep.baseline, 'seeds': len(mine), 'of': sweep.seeds,
           'diverged': sum(1 for r in records if r['point'] == p and 'diverged' in r)}
    for key in [m[0] for m in METRICS] + list(COSTS):
      values = [r[key] for r in mine if key in r]
      mean, half = interval(values)
      row[key] = {'mean': mean, 'ci95': half, 'values': values}
    rows.append(row)
  base = rows[sweep.baseline]
  for row in rows:
    for key, *_ in METRICS:
      m, b = row[key], base[key]
      m['vs_baseline'] = ('baseline' if row['baseline']
                          else compare(m['mean'], m['ci95'], b['mean'], b['ci95']))
  return rows


def _cell(m: dict) -> str:
  if math.isnan(m['mean']):
    return '—'
  text = f"{m['mean']:.3g}" + ('' if math.isnan(m['ci95']) else f" ± {m['ci95']:.2g}")
  return text + (' ≈' if m.get('vs_baseline') == 'within noise' else '')


def markdown(rows: list) -> str:
  heads = [label for _, label, _ in METRICS] + ['train min', 'eval min', 'images seen']
  lines = ['| point | seeds | ' + ' | '.join(heads) + ' |', '|---' * (len(heads) + 2) + '|']
  for row in rows:
    cells = [_cell(row[key]) for key, *_ in METRICS]
    costs = [row[key]['mean'] for key in COSTS]  # means only: no one tests a cost against noise
    cells += ['—' if math.isnan(c) else f'{c:{f}}' for c, f in zip(costs, ('.3g', '.3g', ',.0f'))]
    name = row['name'] + (' (baseline)' if row['baseline'] else '')
    name += f" ({row['diverged']} diverged)" if row.get('diverged') else ''
    lines.append(f"| {name} | {row['seeds']}/{row['of']} | " + ' | '.join(cells) + ' |')
  lines.append('\nmean ± half-width of the 95% Student-t interval over seeds; ≈: the interval '
               'overlaps the baseline\'s, so this point cannot be told apart from it at this many '
               'seeds. train min: wall time of the step that trained the run (together with the '
               'other models of its group, see train_time.json); eval min: of its evaluation.')
  return '\n'.join(lines)


def csv_text(rows: list) -> str:
  out = io.StringIO()
  writer = csv.writer(out)
  keys = [key for key, *_ in METRICS]
  writer.writerow(['point', 'name', 'baseline', 'seeds', 'diverged'] +
                  [f'{k}{s}' for k in keys for s in ('', '_ci95', '_vs_baseline')] +
                  [f'{k}{s}' for k in COSTS for s in ('', '_ci95')])
  for row in rows:
    writer.writerow([row['point'], row['name'], row['baseline'], row['seeds'], row['diverged']] +
                    [row[k][f] for k in keys for f in ('mean', 'ci95', 'vs_baseline')] +
                    [row[k][f] for k in COSTS for f in ('mean', 'ci95')])
  return out.getvalue()
