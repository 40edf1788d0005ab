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

from experiments import evaluate, from_config, train
from experiments.data import dataset
from experiments.runtime import checkpoints, cli, errors, files, hosts, logs
from experiments.sweeps import plan, report, table, training

_CONFIG = cli.define_config('Base config file[:preset].', lock_config=True)
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
  already capped: cap_all). A model whose training diverged is left out (training.diverged_at)
  and the others go on; a group whose members a damaged checkpoint left at different steps is
  grouped again. A (workdir, step) is tried once, or again only after a divergence or a set-aside
  checkpoint changed its group (each leaves out a member or moves a checkpoint, so this ends)."""
  left_out = {run.workdir for run in piece if _left_out(run.workdir)}
  tried = set()
  while True:
    steps = {run.workdir: latest_step(run.workdir) for run in piece}
    todo = [run for run in piece if steps[run.workdir] < run.config.train.steps
            and (run.workdir, steps[run.workdir]) not in tried and run.workdir not in left_out]
    if not todo:
      return
    start = min(steps[run.workdir] for run in todo)
    members = [run for run in todo if steps[run.workdir] == start]
    tried.update((run.workdir, start) for run in members)
    changed = False
    try:
      if training.train_group([r.config for r in members], [r.workdir for r in members]) is None:
        changed = any(latest_step(run.workdir) != start for run in members)  # one set aside
    except training.Diverged as e:  # the others train again from their last checkpoint
      left_out.update(e.workdirs)
      changed = True
    if changed:  # only a change lets a (workdir, step) be tried again, so this ends
      tried.difference_update((run.workdir, start) for run in members)


def _left_out(workdir: str) -> bool:
  step = training.diverged_at(workdir)
  if step is not None:
    logging.warning('%s diverged at step %d in an earlier session and is left out; delete %s to '
                    'train it again.', workdir, step, os.path.join(workdir, training.DIVERGED))
  return step is not None


def execute(runs: list, pieces: list, shard: tuple[int, int] = (0, 1)) -> None:
  """Train and evaluate the runs of this shard that have not finished (nor diverged)."""
  index, count = shard
  for j, piece in enumerate(pieces):
    if j % count != index:
      continue
    train_piece(piece)
    workdirs = {run.workdir for run in piece if training.diverged_at(run.workdir) is None
                and latest_step(run.workdir) >= run.config.train.steps}
    for run in runs:
      if run.workdir in workdirs and table.evaluated(run) is None:
        logging.info('Evaluating %s (seed %d) in %s', plan.point_name(run.overrides), run.seed,
                     run.workdir)
        train.finish_refiner(run.config, run.workdir)  # one stopped while fine-tuning it
        evaluate.run(run.config, run.workdir)


def describe(runs: list, pieces: list, count: int) -> str:
  """One line per run: point, seed, workdir, shard, training group, finished or not."""
  owner, group = plan.shard_of(pieces, count), {}
  for j, piece in enumerate(pieces):
    group.update({run.workdir: j for run in piece})
  lines = [f'{len(runs)} runs, {len(group)} models in {len(pieces)} training groups, {count} '
           'shard(s)']
  for run in runs:
    done = ('diverged' if training.diverged_at(run.workdir) is not None
            else 'done' if table.evaluated(run) is not None else 'to do')
    lines.append(f'shard {owner[run.workdir]}  group {group[run.workdir]}  seed {run.seed}  '
                 f'{done:8s}  {plan.point_name(run.overrides)}  ->  {run.workdir}')
  return '\n'.join(lines)


BASE_FILE = 'base.json'  # the base config a sweep folder's runs were trained from


def check_values(runs: list) -> None:
  """Every run's settings checked before base.json is recorded or any point trains: a bad value
  in a later point would otherwise stop the sweep after the earlier points had trained."""
  for run in runs:
    try:
      from_config.validate(run.config)
      evaluate.check_config(run.config.eval)
    except ValueError as e:
      point = ', '.join(f'{k}={v}' for k, v in run.overrides.items()) or 'the base config'
      raise ValueError(f'sweep point {run.point} ({point}): {e}') from None


def check_base(config, folder: str, record: bool) -> None:
  """Workdir and evaluation names carry only the points' overrides, so a sweep folder holds runs
  of one base config (preset and --config.* overrides): another one would read the old results
  as its own, and resume their checkpoints. The first run records it (`record`); a different one
  is refused. runtime.* (where it runs), preset_note and eval.feature_* may differ (an evaluation
  from another feature network is done again: table.evaluated); keys that a newer version of the
  code added are not compared."""
  kept = {k: v for k, v in config.to_dict().items() if k not in ('runtime', 'preset_note')}
  base = json.loads(json.dumps(kept))
  path = os.path.join(folder, BASE_FILE)
  was, now = _flat(files.read_json(path)), _flat(base)
  differ = sorted(k for k in was.keys() & now.keys()
                  if was[k] != now[k] and not k.startswith('eval.feature_'))
  if differ:
    shown = ', '.join(f'{k}={was[k]!r} there, {now[k]!r} now' for k in differ[:6])
    raise ValueError(
        f'{folder} holds a sweep trained from another base config ({path}): {shown}'
        f'{" and more" if len(differ) > 6 else ""}. Pass another --root for this one, or the '
        'settings it was run with; nothing was changed.')
  if not was and record and files.is_writer():
    files.write_json(path, base)


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def main(argv):
  del argv
  logs.quiet_libraries()
  with errors.reported():
    _main()


def _main():
  sweep = plan.load(_SWEEP.value, _SEEDS.value)
  name = os.path.splitext(os.path.basename(_SWEEP.value))[0]
  folder = os.path.join(_ROOT.value, name)
  config = _CONFIG.value
  runs = plan.expand(config, sweep, folder)  # every override checked before any run
  shard = plan.parse_shard(_SHARD.value)
  hosts.start(config)  # the CPU device count, then (--multihost) the other processes
  check_values(runs)
  check_base(config, folder, record=not (_DRY_RUN.value or _TABLE_ONLY.value))
  cap_all(runs)
  pieces = plan.chunks(runs, models_per_step(_MODELS.value, jax.default_backend()))
  if _DRY_RUN.value:
    print(describe(runs, pieces, shard[1]))
    return
  if not _TABLE_ONLY.value:
    if config.runtime.compile_cache:
      jax.config.update('jax_compilation_cache_dir', os.path.join(_ROOT.value, '.jax_cache'))
    try:
      execute(runs, pieces, shard)
    except training.Stopped as e:
      logging.warning('%s', e)
      return
  if files.is_writer():
    print(table.markdown(report.write(folder, runs, sweep, name)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'sweep'])
  app.run(main, flags_parser=cli.parse_flags)
