"""Sweep charts as PNGs: metrics with error bars, quality against sampling steps, the swept
schedules' logSNR curves, and a grid of samples per point.

Numbers in, pictures out: nothing here reads a config or a run. Each chart stores the numbers
it drew as JSON in the PNG's `sweep_data` text chunk (PIL: Image.open(path).text), so what a
picture shows can be checked against the evaluation files it came from.
"""
import dataclasses
import json
import math
import os

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, PngImagePlugin

from experiments.pictures import canvas
from experiments.runtime import files

DATA_KEY = 'sweep_data'
COLORS = {'baseline': 'tab:orange', 'different': 'tab:red', '': '0.5'}  # '': one seed, no verdict


@dataclasses.dataclass
class Panel:
  """One metric over the points of a sweep: per point a mean, a 95% half-width (nan: one seed)
  and every seed's value."""
  title: str
  means: list
  halves: list
  values: list
  versus: list  # per point: 'baseline', 'within noise', 'different' or '' (too few seeds)


def _save(fig: Figure, path: str, data) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = files.temporary(path)  # renamed into place: shards that finish together never mix writes
  fig.savefig(tmp, dpi=100, metadata={DATA_KEY: json.dumps(data)})
  os.replace(tmp, path)


def _grid(count: int, columns: int, width: float, height: float):
  rows = -(-count // columns)
  fig = Figure(figsize=(width * min(count, columns), height * rows), layout='constrained')
  axes = fig.subplots(rows, min(count, columns), squeeze=False).ravel()
  for ax in axes[count:]:
    ax.set_visible(False)
  return fig, axes


def metrics_chart(path: str, names: list, panels: list, baseline: int, title: str) -> None:
  """A panel per metric: each point's mean with its 95% interval, the seeds as dots, and the
  baseline's interval as a band, so overlap (not distinguishable) is visible at a glance."""
  fig, axes = _grid(len(panels), 4, 3.6, 3.4)
  x = np.arange(len(names))
  for ax, panel in zip(axes, panels):
    # A nan half-width (one seed) draws no bar and no band: 0 would read as no uncertainty.
    means, halves = np.asarray(panel.means, float), np.asarray(panel.halves, float)
    lo, hi = means[baseline] - halves[baseline], means[baseline] + halves[baseline]
    if np.isfinite(lo):
      ax.axhspan(lo, hi, color='tab:orange', alpha=0.2, lw=0)
    for i, values in enumerate(panel.values):
      ax.plot(np.full(len(values), i) + 0.15, values, '.', color='0.55', ms=4)
    for i, versus in enumerate(panel.versus):
      bar = None if np.isnan(halves[i]) else halves[i]
      ax.errorbar(x[i], means[i], yerr=bar, fmt='o', capsize=4, ms=5,
                  color=COLORS.get(versus, 'tab:blue'))
    ax.set_title(panel.title, fontsize=10)
    ax.set_xticks(x, names, rotation=35, ha='right', fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle(title + '\nmean and 95% interval over seeds; dots: the seeds; band: the '
               'baseline (orange)\nred: told apart from it, blue: within noise; gray: one seed, '
               'no verdict', fontsize=10)
  _save(fig, path, {'names': names, 'baseline': baseline,
                    'panels': [dataclasses.asdict(p) for p in panels]})


def steps_chart(path: str, lines: dict, panels: list, title: str) -> None:
  """Quality against sampling steps: `lines` maps a label (a sampler) to {'steps': [...], and per
  panel title a (means, halves) pair}; one panel per title in `panels`."""
  fig, axes = _grid(len(panels), 3, 4.2, 3.4)
  for ax, metric in zip(axes, panels):
    for label, line in lines.items():
      means, halves = line[metric]
      ax.errorbar(line['steps'], means, yerr=np.nan_to_num(np.asarray(halves, float)),
                  fmt='o-', capsize=3, ms=4, label=label)
    ax.set_xscale('log')
    steps = sorted({n for line in lines.values() for n in line['steps']})
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.minorticks_off()
    ax.set(xlabel='sampling steps (network calls: 1 each, heun 2)', title=metric)
    ax.grid(alpha=0.3, which='both')
  axes[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  _save(fig, path, {'panels': panels, 'lines': lines})


def schedules_chart(path: str, curves: dict, title: str) -> None:
  """logSNR(t) of each swept schedule (label -> (t, logsnr)), clipped to +-25 for the plot."""
  fig = Figure(figsize=(7, 4.2), layout='constrained')
  ax = fig.subplots()
  for label, (t, logsnr) in curves.items():
    ax.plot(t, np.clip(logsnr, -25, 25), label=label)
  ax.set(xlabel='t', ylabel='logSNR(t) (clipped to +-25)', title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  finite = {k: [float(v) if math.isfinite(v) else str(v) for v in np.asarray(c[1])[::10]]
            for k, c in curves.items()}
  _save(fig, path, {'logsnr_every_10th': finite})


def samples_chart(path: str, rows: list, columns: list, per_class: int = 4,
                  upscale: int = 2) -> None:
  """rows: (point name, [(images uint8 [N, S, S, 3], labels [N]) or None, per column]); each
  tile holds the first `per_class` sprites of every class, one class per row (None: blank)."""
  tiles = [[None if cell is None else canvas.upscale(_by_class(*cell, per_class), upscale)
            for cell in cells] for _, cells in rows]
  blank = np.full_like(next(t for row in tiles for t in row if t is not None), 255)
  tiles = [[blank if t is None else t for t in row] for row in tiles]
  picture = canvas.labeled_grid(tiles, col_labels=columns, row_labels=[name for name, _ in rows])
  info = PngImagePlugin.PngInfo()
  info.add_text(DATA_KEY, json.dumps({'rows': [name for name, _ in rows], 'columns': columns}))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = files.temporary(path)
  Image.fromarray(picture).save(tmp, pnginfo=info)
  os.replace(tmp, path)


def _by_class(images: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
  classes = sorted(set(labels.tolist()))
  blank = np.full_like(images[0], 255)
  picked = []
  for c in classes:
    mine = images[labels == c][:per_class]
    picked += list(mine) + [blank] * (per_class - len(mine))
  return canvas.grid(np.stack(picked), len(classes))
