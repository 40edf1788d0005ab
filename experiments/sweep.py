"""Ablation sweeps: points x seeds, trained in vmapped groups, evaluated, tabulated and charted.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/schedules.py
  python -m experiments.sweep ... --seeds=3           # every point with seeds 0, 1, 2
  python -m experiments.sweep ... --dry_run           # the runs, their workdirs and shards
  python -m experiments.sweep ... --shard=0/4         # one of 4 disjoint parts (array jobs)
  python -m experiments.sweep ... --table_only        # tabulate and chart what has finished

A sweep file defines get_sweep() -> a list of points ({'section.key': value}), and may set
SEEDS and BASELINE (experiments/sweeps/plan.py). Runs that differ only in sample.* / eval.*
share one trained model; models that differ only in numbers (seed, learning rate, EMA, loss
weighting parameters: from_config.VALUE_KEYS) train together as one vmapped step. Everything
lives under <root>/<sweep name>/, one workdir per model, so a rerun trains and evaluates only
what is missing, and a shard that finishes writes the table of every run finished so far.
"""
import json
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import evaluate, from_config
from experiments.data import dataset
from experiments.runtime import checkpoints, files, hosts, logs
from experiments.sweeps import plan, report, table, training

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Base config file[:preset].',
                                          lock_config=True)
_SWEEP = flags.DEFINE_string('sweep', None, 'Python file defining get_sweep().')
_ROOT = flags.DEFINE_string('root', 'runs/sweeps', 'Where the sweep folders go.')
_SEEDS = flags.DEFINE_integer('seeds', 0, 'Runs per point (seeds base..base+N-1); 0: the '
                              "sweep file's SEEDS, else 1.")
_SHARD = flags.DEFINE_string('shard', '', 'i/n: run only the i-th of n disjoint parts (0-based).')
_MODELS = flags.DEFINE_integer('models_per_step', 0, 'At most this many models in one vmapped '
                               'train step; 0: automatic (1 on CPU, else all that can share one).')
_TABLE_ONLY = flags.DEFINE_bool('table_only', False, 'Only tabulate and chart finished runs.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the runs, workdirs and shards; run nothing.')
hosts.define_flags()  # --multihost [--coordinator_address --num_processes --process_id]


def models_per_step(requested: int, backend: str) -> int:
  """0 -> 1 on CPU, where XLA runs vmapped convolutions as grouped ones, far slower (jax 0.10.2,
  2 cores, the cpu preset's step: 91 images/s for one model, 14 models x images/s for two in
  one step, 16 for four), and no limit (0) on GPU / TPU, whose width a 16x16 model leaves idle."""
  if requested > 0:
    return requested
  return 1 if backend == 'cpu' else 0


def latest_step(workdir: str) -> int:
  """The step of the workdir's latest checkpoint, 0 without one (and without creating folders)."""
  return checkpoints.manager(workdir, 1, create=False).latest_step() or 0


def cap_all(runs: list) -> None:
  """Every run at its capped length (train.max_epochs), before any file is named: all the runs of a
  workdir, not only the one that trains it, must look for the evaluation at the step it ends."""
  sizes: dict = {}
  for run in runs:
    if run.config.train.max_epochs > 0:
      data = json.dumps(run.config.data.to_dict(), sort_keys=True)
      if data not in sizes:
        sizes[data] = dataset.split_size(run.config.data, 'train')
      from_config.cap_steps(run.config, sizes[data])


def train_piece(piece: list) -> None:
  """Train the piece's models that are not finished, those at one step as one group (every run
  already capped: cap_all)."""
  steps = {run.workdir: latest_step(run.workdir) for run in piece}
  todo = [run for run in piece if steps[run.workdir] < run.config.train.steps]
  for start in sorted({steps[run.workdir] for run in todo}):
    members = [run for run in todo if steps[run.workdir] == start]
    training.train_group([r.config for r in members], [r.workdir for r in members])


def execute(runs: list, pieces: list, shard: tuple[int, int] = (0, 1)) -> None:
  """Train and evaluate the runs of this shard that have not finished."""
  index, count = shard
  for j, piece in enumerate(pieces):
    if j % count != index:
      continue
    train_piece(piece)
    workdirs = {run.workdir for run in piece}
    for run in runs:
      if run.workdir in workdirs and not os.path.exists(table.eval_path(run)):
        logging.info('Evaluating %s (seed %d) in %s', plan.point_name(run.overrides), run.seed,
                     run.workdir)
        evaluate.run(run.config, run.workdir)


def describe(runs: list, pieces: list, count: int) -> str:
  """One line per run: point, seed, workdir, shard, training group, finished or not."""
  owner, group = plan.shard_of(pieces, count), {}
  for j, piece in enumerate(pieces):
    group.update({run.workdir: j for run in piece})
  lines = [f'{len(runs)} runs, {len(group)} models in {len(pieces)} training groups, {count} '
           'shard(s)']
  for run in runs:
    done = 'done' if os.path.exists(table.eval_path(run)) else 'to do'
    lines.append(f'shard {owner[run.workdir]}  group {group[run.workdir]}  seed {run.seed}  '
                 f'{done:5s}  {plan.point_name(run.overrides)}  ->  {run.workdir}')
  return '\n'.join(lines)


def main(argv):
  del argv
  logs.quiet_libraries()
  sweep = plan.load(_SWEEP.value, _SEEDS.value)
  name = os.path.splitext(os.path.basename(_SWEEP.value))[0]
  folder = os.path.join(_ROOT.value, name)
  config = _CONFIG.value
  runs = plan.expand(config, sweep, folder)  # every override checked before any run
  shard = plan.parse_shard(_SHARD.value)
  hosts.start(config)  # the CPU device count, then (--multihost) the other processes
  cap_all(runs)
  pieces = plan.chunks(runs, models_per_step(_MODELS.value, jax.default_backend()))
  if _DRY_RUN.value:
    print(describe(runs, pieces, shard[1]))
    return
  if not _TABLE_ONLY.value:
    if config.runtime.compile_cache:
      jax.config.update('jax_compilation_cache_dir', os.path.join(_ROOT.value, '.jax_cache'))
    execute(runs, pieces, shard)
  if files.is_writer():
    print(table.markdown(report.write(folder, runs, sweep, name)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'sweep'])
  app.run(main)
