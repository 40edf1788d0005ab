"""A sweep as a list of runs: points x seeds, their workdirs, training groups and shards.

A sweep file defines get_sweep() -> a list of points, each {'section.key': value}, and may set
SEEDS (runs per point; default 1), BASELINE (the index of the point the others are compared
with; default 0) and BASE (overrides of every point, such as a shorter budget: they apply
before the point's and stay out of workdir and point names). Seed i of a point trains with
config.seed = the base config's seed + i.

Runs that differ only in sample.* / eval.* share one trained workdir. Workdirs whose configs
differ only in from_config.VALUE_KEYS (the seed, learning rate, ...) form a training group,
trained as one vmapped step, in chunks of at most `models_per_step`. Shards take whole chunks,
chunk j going to shard j % n: the split depends on the sweep alone, never on what has finished.
"""
import dataclasses
import importlib.util
import os
from typing import Any

from experiments import from_config, sample

SAMPLING_SECTIONS = ('sample', 'eval')
# sample.* keys that shape the grid, GIF and sheet but not the evaluation's sprites (a sprite's
# noise derives from its own key, so the batch size does not change it either)
_PICTURE_ONLY = ('per_class', 'mix', 'gif', 'gif_frames', 'upscale', 'sheet', 'sheet_colors',
                 'sheet_upscale', 'sheet_key', 'batch_size')


@dataclasses.dataclass(frozen=True)
class Run:
  point: int       # index of its point in the sweep
  seed: int        # config.seed
  overrides: dict  # the point's overrides (the seed not among them)
  config: Any
  workdir: str     # where its model trains; shared by runs that differ only in sample.* / eval.*


@dataclasses.dataclass(frozen=True)
class Sweep:
  points: list
  seeds: int
  baseline: int
  base: dict = dataclasses.field(default_factory=dict)


def load(path: str, seeds: int = 0) -> Sweep:
  """The sweep file at `path`; `seeds` > 0 overrides its SEEDS."""
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  points = module.get_sweep()
  seeds = seeds or getattr(module, 'SEEDS', 1)
  baseline = getattr(module, 'BASELINE', 0)
  if any('seed' in p for p in points):
    raise ValueError(f'{path}: a point sets `seed`; seeds are an axis of their own '
                     '(SEEDS, --seeds).')
  if not points or seeds < 1 or not 0 <= baseline < len(points):
    raise ValueError(f'{path}: needs >= 1 point, SEEDS >= 1 and 0 <= BASELINE < {len(points)}.')
  return Sweep(points, seeds, baseline, getattr(module, 'BASE', {}))


def apply(config, overrides: dict):
  """A copy of `config` with dotted overrides ('seed' for the top level); unknown keys and wrong
  types raise, by name."""
  out = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    parent = out if not section else out[section] if section in out else None
    if parent is None or name not in parent:
      raise ValueError(f'Sweep override {key!r}: no such config key (see configs/base.py).')
    parent[name] = value
  return out


def train_slug(overrides: dict) -> str:
  """The workdir name: the overrides that change the trained model ('base' if none)."""
  items = sorted((k, v) for k, v in overrides.items() if k.split('.')[0] not in SAMPLING_SECTIONS)
  return ','.join(f'{k}={v}' for k, v in items).replace('/', '_') or 'base'


def point_name(overrides: dict) -> str:
  return ', '.join(f'{k}={v}' for k, v in overrides.items()) or 'base'


def expand(config, sweep: Sweep, folder: str) -> list[Run]:
  """Every (point, seed) run, points outer; every override is checked before anything runs."""
  out, config = [], apply(config, sweep.base)
  for p, overrides in enumerate(sweep.points):
    for i in range(sweep.seeds):
      seeded = {**overrides, 'seed': config.seed + i}
      out.append(Run(p, config.seed + i, overrides, apply(config, seeded),
                     os.path.join(folder, train_slug(seeded))))
  _check_distinct_evaluations(out)
  return out


def _check_distinct_evaluations(runs: list[Run]) -> None:
  """Points sharing a workdir are told apart by their evaluation's file name (sample.output_name):
  two whose sample.* / eval.* differ only in what it does not carry (eval.*) would read one file,
  so the table would show one point's numbers for both. Refuse them before anything runs."""
  def measured(config) -> dict:  # what the evaluation's numbers depend on
    drawn = {k: v for k, v in config.sample.to_dict().items() if k not in _PICTURE_ONLY}
    return {'sample': drawn, 'eval': config.eval.to_dict()}

  seen: dict = {}
  for run in runs:
    other = seen.setdefault((run.workdir, sample.output_name(run.config, 0)), run)
    if measured(other.config) != measured(run.config):  # the same twice is one evaluation: fine
      raise ValueError(
          f'Sweep points {point_name(other.overrides)!r} and {point_name(run.overrides)!r} would '
          f'write one evaluation file in {run.workdir}: they differ only in settings its name does '
          'not carry (eval.*). Put them in separate sweeps (each its own folder), or vary a '
          'setting the name carries.')



def chunks(runs: list[Run], models_per_step: int = 0) -> list[list[Run]]:
  """Training groups of workdirs (one Run each, the first that trains there), in sweep order,
  split into pieces of at most `models_per_step` (0: no limit)."""
  groups: dict[str, list[Run]] = {}
  seen = set()
  for run in runs:
    if run.workdir not in seen:
      seen.add(run.workdir)
      groups.setdefault(from_config.shared_training(run.config), []).append(run)
  size = models_per_step or max(len(g) for g in groups.values())
  return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def parse_shard(spec: str) -> tuple[int, int]:
  """'i/n' -> (i, n), 0 <= i < n; '' -> (0, 1)."""
  if not spec:
    return 0, 1
  index, _, count = spec.partition('/')
  if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
    raise ValueError(f'--shard={spec}: expected i/n with 0 <= i < n, e.g. 0/4 ... 3/4.')
  return int(index), int(count)


def shard_of(pieces: list[list[Run]], count: int) -> dict[str, int]:
  """workdir -> the shard that trains and evaluates it."""
  return {run.workdir: j % count for j, piece in enumerate(pieces) for run in piece}
