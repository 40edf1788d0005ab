"""What a sweep writes beside its runs: results.json / .md / .csv and the charts.

  metrics.png    every metric per point: mean, 95% interval, seeds, the baseline's band
  steps.png      quality against sampling steps, one line per sampler (sweeps over sample.steps)
  schedules.png  the logSNR curves of the swept schedules (when they differ)
  samples.png    per point a tile per seed: the evaluated sprites, a row per class
Files are written whole and renamed into place, so shards that finish together can all write.
"""
import math
import os

import numpy as np

from experiments import from_config
from experiments.pictures import charts
from experiments.runtime import files
from experiments.sweeps import plan, table

QUALITY = ('FID / floor ↓', 'KID ↓', 'precision ↑', 'recall ↑')  # the panels of steps.png


def _plain(value):
  """JSON-ready: nan -> None (JSON has no nan)."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def short_name(overrides: dict) -> str:
  """'schedule=linear, zero_terminal_snr=True': the keys without their sections."""
  return ', '.join(f"{k.rpartition('.')[2]}={v}" for k, v in overrides.items()) or 'base'


def write(folder: str, runs: list, sweep: plan.Sweep, title: str) -> list[dict]:
  """Tabulate and chart every finished run under `folder`; returns the point rows."""
  records = [table.record(r) for r in runs]
  rows = table.summarize(records, sweep)
  os.makedirs(folder, exist_ok=True)
  files.write_json(os.path.join(folder, 'results.json'), _plain(
      {'sweep': title, 'seeds': sweep.seeds, 'baseline': sweep.baseline, 'points': rows,
       'runs': records}))
  files.write_text(os.path.join(folder, 'results.md'), table.markdown(rows) + '\n')
  files.write_text(os.path.join(folder, 'results.csv'), table.csv_text(rows).replace('nan', ''))
  if any(row['seeds'] for row in rows):
    _charts(folder, runs, records, rows, sweep, title)
  return rows


def _charts(folder, runs, records, rows, sweep, title) -> None:
  names = [short_name(o) for o in sweep.points]
  panels = [charts.Panel(label, *([r[key][f] for r in rows]
                                  for f in ('mean', 'ci95', 'values', 'vs_baseline')))
            for key, label, _ in table.METRICS]
  charts.metrics_chart(os.path.join(folder, 'metrics.png'), names, panels, sweep.baseline, title)
  lines = steps_lines(rows, sweep)
  if lines:
    charts.steps_chart(os.path.join(folder, 'steps.png'), lines, list(QUALITY), title)
  curves = schedule_curves(runs, sweep)
  if len(curves) > 1:
    charts.schedules_chart(os.path.join(folder, 'schedules.png'), curves,
                           f'{title}: the swept schedules')
  seeds = sorted({r.seed for r in runs})
  done = {(rec['point'], rec['seed']): rec for rec in records if 'fid' in rec}
  cells = [(names[p], [_samples(done[p, s]) if (p, s) in done else None for s in seeds])
           for p in range(len(sweep.points)) if any((p, s) in done for s in seeds)]
  charts.samples_chart(os.path.join(folder, 'samples.png'), cells, [f'seed {s}' for s in seeds])


def _samples(rec: dict):
  with np.load(rec['eval'][:-len('.json')] + '_samples.npz') as f:
    return f['images'], f['labels']


def steps_lines(rows: list, sweep: plan.Sweep) -> dict:
  """label (the point less its sample.steps) -> {'steps': [...], metric: (means, halves)}, for
  labels evaluated at two or more step counts."""
  by_label: dict[str, list] = {}
  for row, overrides in zip(rows, sweep.points):
    if 'sample.steps' in overrides and row['seeds']:
      rest = {k: v for k, v in overrides.items() if k != 'sample.steps'}
      by_label.setdefault(short_name(rest), []).append((overrides['sample.steps'], row))
  keys = {label: key for key, label, _ in table.METRICS}
  lines = {}
  for label, points in by_label.items():
    if len(points) > 1:
      points.sort(key=lambda p: p[0])
      lines[label] = {'steps': [s for s, _ in points]}
      for metric in QUALITY:
        lines[label][metric] = ([r[keys[metric]]['mean'] for _, r in points],
                                [r[keys[metric]]['ci95'] for _, r in points])
  return lines


def schedule_curves(runs: list, sweep: plan.Sweep) -> dict:
  """label -> (t, logSNR(t)) for each distinct schedule among the points."""
  t = np.linspace(0.0, 1.0, 201)
  curves = {}
  for run in {r.point: r for r in runs}.values():  # one run per point: seeds share a schedule
    logsnr = np.asarray(from_config.logsnr_fn(run.config.diffusion)(t), np.float64)
    if not any(np.array_equal(logsnr, c) for _, c in curves.values()):
      diffusion = {k: v for k, v in sweep.points[run.point].items() if k.startswith('diffusion.')}
      curves[short_name(diffusion) if diffusion else 'base'] = (t, logsnr)
  return curves
