"""Ablation sweeps: one config, a list of overrides, every run trained, evaluated and tabulated.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/schedules.py
  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/samplers.py
  python -m experiments.sweep ... --table_only      # tabulate what has finished so far

A sweep file defines `get_sweep()` -> a list of {'section.key': value} dicts. Runs whose
overrides differ only in `sample.*` / `eval.*` share one trained workdir: the model is
trained once, then evaluated with each sampling setting. Workdirs live under
<root>/<sweep name>/, so an interrupted sweep resumes where it stopped (train.run resumes
from checkpoints; finished evaluations are read back, not redone).
"""
import importlib.util
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import evaluate, sample, train
from experiments.runtime import checkpoints, files, hosts

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Base config file[:preset].',
                                          lock_config=True)
_SWEEP = flags.DEFINE_string('sweep', None, 'Python file defining get_sweep().')
_ROOT = flags.DEFINE_string('root', 'runs/sweeps', 'Where the sweep folders go.')
_TABLE_ONLY = flags.DEFINE_bool('table_only', False, 'Only tabulate finished runs.')
hosts.define_flags()

SAMPLING_SECTIONS = ('sample', 'eval')


def load_sweep(path: str) -> list[dict]:
  spec = importlib.util.spec_from_file_location('sweep', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_sweep()


def apply(config, overrides: dict):
  """A copy of `config` with dotted overrides; unknown keys and wrong types raise, by name."""
  out = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, _, name = key.partition('.')
    if section not in out or name not in out[section]:
      raise KeyError(f'Sweep override {key!r}: no such config key (see configs/base.py).')
    out[section][name] = value
  return out


def train_slug(overrides: dict) -> str:
  """The workdir name: the overrides that change the trained model ('base' if none)."""
  items = sorted((k, v) for k, v in overrides.items() if k.split('.')[0] not in SAMPLING_SECTIONS)
  return ','.join(f'{k}={v}' for k, v in items).replace('/', '_') or 'base'


def _eval_path(config, workdir: str) -> str:
  step = checkpoints.manager(workdir, 1).latest_step() or 0
  return os.path.join(workdir, 'eval', sample.output_name(config, step) + '.json')


def run_one(config, workdir: str) -> None:
  """Train (or resume, or skip if done), then evaluate unless this evaluation exists."""
  if (checkpoints.manager(workdir, 1).latest_step() or 0) < config.train.steps:
    train.run(config, workdir)
  if not os.path.exists(_eval_path(config, workdir)):
    evaluate.run(config, workdir)


def row(overrides: dict, config, workdir: str) -> dict:
  """One table row from a run's eval json ({} of metrics if it has not finished)."""
  out = {'overrides': overrides, 'workdir': workdir}
  path = _eval_path(config, workdir)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      r = json.load(f)
    mem = r['memorization']['samples']
    out.update(fid=r['fid']['samples'], fid_ratio=r['fid']['ratio'], kid=r['kid']['samples'],
               precision=r['precision']['samples'], recall=r['recall']['samples'],
               cond_acc=r['conditional_accuracy']['samples'], near_copy=mem['near_copy_rate'],
               exact_copy=mem['exact_copy_rate'], samples=r['samples']['count'])
  return out


def markdown(rows: list[dict]) -> str:
  cols = ('fid', 'fid_ratio', 'kid', 'precision', 'recall', 'cond_acc', 'near_copy', 'exact_copy')
  lines = ['| overrides | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
  for r in rows:
    cells = [('—' if r.get(c) is None else f'{r[c]:.4g}') for c in cols]
    name = ', '.join(f'{k}={v}' for k, v in r['overrides'].items()) or 'base'
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  hosts.start(_CONFIG.value)
  sweep = load_sweep(_SWEEP.value)
  folder = os.path.join(_ROOT.value, os.path.splitext(os.path.basename(_SWEEP.value))[0])
  runs = [(o, apply(_CONFIG.value, o)) for o in sweep]  # every override checked before any run
  rows = []
  for overrides, config in runs:
    workdir = os.path.join(folder, train_slug(overrides))
    if not _TABLE_ONLY.value:
      logging.info('Sweep run %s in %s', overrides, workdir)
      run_one(config, workdir)
    rows.append(row(overrides, config, workdir))
  if files.is_writer():
    files.write_json(os.path.join(folder, 'results.json'), rows)
    table = markdown(rows)
    with open(os.path.join(folder, 'results.md'), 'w', encoding='utf-8') as f:
      f.write(table + '\n')
    print(table)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'sweep'])
  app.run(main)
