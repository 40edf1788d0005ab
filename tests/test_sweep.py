"""Sweeps: points x seeds, shards, resuming; a table and charts holding the eval files' numbers."""
import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from configs import sprites
from experiments import evaluate, from_config, sweep
from experiments.pictures import charts
from experiments.runtime import checkpoints, preemption
from experiments.sweeps import plan, report, table, training

QUICK = {'eval.feature_steps': 20, 'eval.repeats': 2, 'eval.num_samples': 16,
         'eval.nearest_shown': 4, 'sample.gif': False, 'sample.sheet': False}
# Points 0 and 1 differ only in sampling, so they share the models of each seed; point 2 differs
# only in a number, so all four models can train in one vmapped step (here in pieces of 2).
POINTS = [{'sample.steps': 4}, {'sample.steps': 2}, {'train.learning_rate': 5e-4}]


def _config(data_dir):
  return tiny_config(data_dir, **QUICK)


def _chart_data(path):
  return json.loads(Image.open(path).text[charts.DATA_KEY])


def _trained(runs):
  return {r.workdir for r in runs if sweep.latest_step(r.workdir) > 0}


def test_sweep_in_shards_resumes_and_tabulates_what_the_eval_files_say(tmp_path, data_dir,
                                                                       monkeypatch):
  swp = plan.Sweep(POINTS, seeds=2, baseline=0)
  runs = plan.expand(_config(data_dir), swp, str(tmp_path))
  pieces = plan.chunks(runs, models_per_step=2)
  assert [len(p) for p in pieces] == [2, 2]
  sweep.execute(runs, pieces, (0, 2))  # shard 0 of 2: the models of points 0 and 1
  first = _trained(runs)
  assert first == {r.workdir for r in runs if r.point < 2} and len(first) == 2

  real_evaluate, calls = evaluate.run, []

  def interrupted(*args, **kwargs):  # shard 1 stops after its first evaluation
    if calls:
      raise KeyboardInterrupt
    calls.append(args[1])
    return real_evaluate(*args, **kwargs)
  monkeypatch.setattr(evaluate, 'run', interrupted)
  with pytest.raises(KeyboardInterrupt):
    sweep.execute(runs, pieces, (1, 2))
  assert _trained(runs) - first == {r.workdir for r in runs if r.point == 2}  # disjoint shards
  partial = report.write(str(tmp_path), runs, swp, 'test')  # --table_only: what has finished
  assert [row['seeds'] for row in partial] == [2, 2, 1]

  # The rerun trains nothing and evaluates only the missing run.
  trained, evaluated = [], []
  monkeypatch.setattr(training, 'train_group', lambda *a: trained.append(a))
  monkeypatch.setattr(evaluate, 'run', lambda c, w: evaluated.append(w) or real_evaluate(c, w))
  sweep.execute(runs, pieces)
  assert trained == [] and len(evaluated) == 1 and evaluated[0] != calls[0]
  for workdir in first:  # trained once: one metrics line per step
    lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
    assert [json.loads(l)['step'] for l in lines] == [1, 2]
    assert json.load(open(os.path.join(workdir, training.TIME_FILE)))['models'] == 2

  rows = report.write(str(tmp_path), runs, swp, 'test')
  _check_against_eval_files(tmp_path, runs, rows)


def _check_against_eval_files(folder, runs, rows):
  fid = {p: [json.load(open(table.eval_path(r)))['fid']['samples'] for r in runs if r.point == p]
         for p in range(len(POINTS))}
  assert len({tuple(v) for v in fid.values()}) == 3  # every point its own numbers
  results = json.load(open(folder / 'results.json'))
  by_csv = list(csv.DictReader(open(folder / 'results.csv')))
  drawn = _chart_data(folder / 'metrics.png')['panels'][0]
  assert drawn['title'].startswith('FID ')
  for p, values in fid.items():
    assert results['points'][p]['fid']['values'] == values
    assert rows[p]['seeds'] == 2
    np.testing.assert_allclose(float(by_csv[p]['fid']), np.mean(values))
    np.testing.assert_allclose(drawn['means'][p], np.mean(values))
    assert drawn['values'][p] == values
    mean, half = table.interval(values)
    assert f'{mean:.3g} ± {half:.2g}' in open(folder / 'results.md').read()
  steps = _chart_data(folder / 'steps.png')['lines']['base']
  assert steps['steps'] == [2, 4]
  np.testing.assert_allclose(steps['FID / floor ↓'][0], [rows[1]['fid_ratio']['mean'],
                                                         rows[0]['fid_ratio']['mean']])
  assert _chart_data(folder / 'samples.png')['rows'] == ['steps=4', 'steps=2',
                                                         'learning_rate=0.0005']
  assert not os.path.exists(folder / 'schedules.png')  # one schedule: nothing to compare


def test_shards_are_disjoint_deterministic_and_keep_shared_models_together(data_dir):
  points = [{'diffusion.schedule': s} for s in ('linear', 'cosine', 'edm')]
  points += [{'diffusion.schedule': 'cosine', 'sample.steps': 7},
             {'diffusion.schedule': 'cosine', 'train.learning_rate': 1e-4}]
  runs = plan.expand(_config(data_dir), plan.Sweep(points, 3, 0), '/nowhere')
  for per_step in (0, 1, 2):
    pieces = plan.chunks(runs, per_step)
    for count in (1, 2, 3, 5):
      owner = plan.shard_of(pieces, count)
      assert owner == plan.shard_of(plan.chunks(runs, per_step), count)
      assert set(owner) == {r.workdir for r in runs} and set(owner.values()) <= set(range(count))
      shards = [{r.workdir for r in runs if owner[r.workdir] == i} for i in range(count)]
      assert sum(map(len, shards)) == len(set().union(*shards)) == 12  # disjoint; the union all
  # Point 3 only samples differently: it shares point 1's models, so it needs no workdir.
  assert len({r.workdir for r in runs}) == 12
  assert [sweep.models_per_step(k, b) for k, b in ((0, 'cpu'), (0, 'gpu'), (3, 'cpu'))] == [1, 0, 3]
  listing = sweep.describe(runs, plan.chunks(runs, 2), 2)
  assert listing.splitlines()[0] == '15 runs, 12 models in 7 training groups, 2 shard(s)'
  assert all(f'->  {r.workdir}' in listing for r in runs)


def test_seeds_and_shard_specs_are_checked(tmp_path, data_dir):
  path = tmp_path / 'seeded.py'
  head = 'SEEDS = 3\nBASELINE = 1\n\ndef get_sweep():\n'
  path.write_text(head + '  return [{}, {"seed": 4}]\n')
  with pytest.raises(ValueError, match='seeds are an axis'):
    plan.load(str(path))
  path.write_text(head + '  return [{}, {"train.steps": 4}]\n')
  loaded = plan.load(str(path))
  assert (loaded.seeds, loaded.baseline, plan.load(str(path), seeds=5).seeds) == (3, 1, 5)
  runs = plan.expand(_config(data_dir), loaded, 'root')
  assert [(r.point, r.seed, r.config.seed) for r in runs][:4] == [(0, 0, 0), (0, 1, 1),
                                                                   (0, 2, 2), (1, 0, 0)]
  assert runs[4].workdir == os.path.join('root', 'seed=1,train.steps=4')
  assert plan.parse_shard('2/3') == (2, 3) and plan.parse_shard('') == (0, 1)
  for bad in ('3/3', '1', 'a/b', '-1/2'):
    with pytest.raises(ValueError, match='--shard'):
      plan.parse_shard(bad)


def test_interval_is_student_t_and_overlap_means_within_noise():
  mean, half = table.interval([1.0, 2.0, 3.0])
  assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)
  assert np.isnan(table.interval([5.0])[1])
  assert table.compare(2.0, 0.5, 3.0, 0.6) == 'within noise'
  assert table.compare(2.0, 0.5, 3.2, 0.6) == 'different'
  assert table.compare(2.0, float('nan'), 3.0, 0.6) == ''


def test_unknown_override_fails_before_any_run(data_dir):
  with pytest.raises(ValueError, match='diffusion.schedul'):
    plan.apply(_config(data_dir), {'diffusion.schedul': 'cosine'})


def test_sweep_files_load_and_apply(data_dir):
  base = _config(data_dir)
  for name in ('schedules', 'predictions', 'samplers'):
    path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'sweeps', f'{name}.py')
    plan.expand(base, plan.load(path), 'root')


@pytest.mark.parametrize('name', ['schedules', 'samplers', 'predictions'])
def test_shipped_sweep_files_apply_to_the_cpu_preset(name):
  """Every point of the sweeps in configs/sweeps/ names real keys and passes the config checks."""
  root = os.path.join(os.path.dirname(__file__), '..', 'configs', 'sweeps')
  spec = plan.load(os.path.join(root, f'{name}.py'))
  base = plan.apply(sprites.get_config('cpu'), spec.base)
  for point in spec.points:
    from_config.validate(plan.apply(base, point))


def test_a_sweep_of_the_full_cpu_preset_plans_before_jax_starts(tmp_path):
  """Planning (names, shards) must not start JAX's backend: the sweep sets the CPU device count
  and joins a multi-host run after it. The cpu preset's own first step (logsnr_start -8) once
  made naming a draw evaluate the schedule, and the sweep failed before it began."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', '--config=configs/sprites.py:cpu',
       '--sweep=configs/sweeps/predictions.py', '--dry_run', f'--root={tmp_path}'],
      cwd=root, capture_output=True, text=True, check=False,  # as a user runs it: the tests'
      env={k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'})  # device flag hid it
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'diffusion.prediction=v' in done.stdout + done.stderr


def test_a_sweep_caps_each_run_at_max_epochs_and_skips_one_finished_there(data_dir, monkeypatch):
  # 0.02 passes over the 1,456 training emoji at batch 16: 1.8 steps, so 2 (dispatches of 1).
  config = tiny_config(data_dir, **{'train.steps': 1_000, 'train.max_epochs': 0.02,
                                    'train.steps_per_dispatch': 1})
  run = plan.Run(point=0, seed=0, overrides={}, config=config, workdir='/nonexistent')
  drawn_otherwise = plan.Run(point=1, seed=0, overrides={'sample.steps': 2},
                             config=config.copy_and_resolve_references(), workdir='/nonexistent')
  drawn_otherwise.config.sample.steps = 2
  trained = []
  monkeypatch.setattr(training, 'train_group', lambda configs, workdirs: trained.append(
      [c.train.steps for c in configs]))
  monkeypatch.setattr(sweep, 'latest_step', lambda workdir: 0)
  sweep.cap_all([run, drawn_otherwise])
  # Both look for their evaluation at the step the shared model ends, not at train.steps.
  assert [os.path.basename(table.eval_path(r)) for r in (run, drawn_otherwise)] == [
      'step000002_ddim4.json', 'step000002_ddim2.json']
  sweep.train_piece([run])
  assert trained == [[2]]
  monkeypatch.setattr(sweep, 'latest_step', lambda workdir: 2)
  sweep.train_piece([run])
  assert trained == [[2]], 'a run that stopped at its cap is finished, not trained again'


def test_points_that_would_share_an_evaluation_file_are_refused(data_dir):
  """eval.* is not in the evaluation's name: two points differing only there would read one file."""
  config = tiny_config(data_dir)
  clash = plan.Sweep(points=[{'eval.num_samples': 32}, {'eval.num_samples': 64}], seeds=1, baseline=0)
  with pytest.raises(ValueError, match='would write one evaluation file'):
    plan.expand(config, clash, '/tmp/unused')
  same = plan.Sweep(points=[{'sample.seed': 0}, {}], seeds=1, baseline=0)  # one evaluation, read twice
  assert len(plan.expand(config, same, '/tmp/unused')) == 2
  grids = plan.Sweep(points=[{'sample.per_class': 2}, {}], seeds=1, baseline=0)  # the same sprites
  assert len(plan.expand(config, grids, '/tmp/unused')) == 2
  apart = plan.Sweep(points=[{'sample.seed': 1}, {}], seeds=1, baseline=0)
  assert len({table.eval_path(r) for r in plan.expand(config, apart, '/tmp/unused')}) == 2


class _StopAtStep2:
  """preemption.StopOnSignal as if SIGTERM arrived during the second dispatch (of one step)."""
  received = None
  calls = 0

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    return False

  def requested(self):
    self.calls += 1
    if self.calls >= 2:
      self.received = 'SIGTERM'
    return self.received is not None


def test_a_stopped_group_saves_resumes_exactly_and_keeps_its_log_and_milestones(tmp_path, data_dir,
                                                                                monkeypatch):
  config = tiny_config(data_dir, **{'train.steps': 4, 'train.ckpt_every': 3,
                                    'train.keep_checkpoints': 1, 'train.keep_every': 2,
                                    'train.steps_per_dispatch': 1, 'eval.at_end': False})
  workdir = str(tmp_path / 'run')
  monkeypatch.setattr(preemption, 'StopOnSignal', _StopAtStep2)
  with pytest.raises(training.Stopped, match='at step 2'):
    training.train_group([config], [workdir])
  assert sweep.latest_step(workdir) == 2  # saved where it stopped, not at ckpt_every
  monkeypatch.undo()
  resumed = training.train_group([config], [workdir])[0]
  straight = training.train_group([config], [str(tmp_path / 'straight')])[0]
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)  # params, EMA, Adam, step
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [1, 2, 3, 4], 'the resumed sweep kept its log'
  kept = checkpoints.manager(workdir, 1, create=False).all_steps()
  assert list(kept) == [2, 4], 'train.keep_every keeps its milestones in a sweep too'


def test_a_diverging_member_is_left_out_and_the_others_finish(tmp_path, data_dir, monkeypatch):
  config = tiny_config(data_dir, **QUICK, **{'eval.at_end': False})
  runs = plan.expand(config, plan.Sweep([{}, {'train.learning_rate': 5e-4}], 1, 0), str(tmp_path))
  nan_at = {runs[1].workdir}
  real_check = training._check_finite
  monkeypatch.setattr(training, '_check_finite', lambda losses, step, workdirs, mngrs: real_check(
      [np.nan if w in nan_at else loss for loss, w in zip(losses, workdirs)], step, workdirs, mngrs))
  sweep.execute(runs, plan.chunks(runs, models_per_step=2))
  assert sweep.latest_step(runs[0].workdir) == 2 and os.path.exists(table.eval_path(runs[0]))
  assert training.diverged_at(runs[1].workdir) == 1 and not os.path.exists(table.eval_path(runs[1]))
  rows = table.summarize([table.record(r) for r in runs], plan.Sweep([{}, {}], 1, 0))
  assert [(row['seeds'], row['diverged']) for row in rows] == [(1, 0), (0, 1)]
  assert '(1 diverged)' in table.markdown(rows)
  trained = []
  monkeypatch.setattr(training, 'train_group', lambda *a: trained.append(a))
  sweep.train_piece(runs)  # a rerun leaves the diverged one out instead of diverging again
  assert trained == []


def test_a_bad_value_in_a_later_point_is_refused_before_anything_is_recorded(tmp_path, data_dir):
  config = tiny_config(data_dir)
  runs = plan.expand(config, plan.Sweep([{}, {'train.learning_rate': -1.0}], 1, 0), str(tmp_path))
  with pytest.raises(ValueError, match=r'sweep point 1 \(train.learning_rate=-1.0\): '
                     r'train.learning_rate=-1.0: must be > 0'):
    sweep.check_values(runs)
  sweep.check_values(runs[:1])


def test_a_sweep_folder_refuses_another_base_config(tmp_path, data_dir):
  config = tiny_config(data_dir)
  sweep.check_base(config, str(tmp_path), record=False)
  assert not os.path.exists(tmp_path / sweep.BASE_FILE), 'a dry run records nothing'
  sweep.check_base(config, str(tmp_path), record=True)
  other = config.copy_and_resolve_references()
  other.runtime.compile_cache = not other.runtime.compile_cache  # where it runs: allowed
  sweep.check_base(other, str(tmp_path), record=True)
  other.diffusion.prediction = 'x0' if config.diffusion.prediction != 'x0' else 'v'
  with pytest.raises(ValueError, match=re.escape(
      f'diffusion.prediction={config.diffusion.prediction!r} there, '
      f'{other.diffusion.prediction!r} now')):
    sweep.check_base(other, str(tmp_path), record=True)


def test_an_evaluation_from_another_feature_network_is_not_read_as_finished(tmp_path, data_dir):
  """A sweep resumed after the feature network changed (another version or eval.feature_*)
  evaluates again instead of tabulating old-space numbers beside new ones."""
  config = tiny_config(data_dir)
  run = plan.Run(point=0, seed=0, overrides={}, config=config, workdir=str(tmp_path))
  current = dataclasses.asdict(evaluate.feature_recipe(config.eval))
  os.makedirs(os.path.dirname(table.eval_path(run)))
  for net, finished in ((current, True), ({**current, 'version': current['version'] + 1}, False),
                        ({**current, 'steps': current['steps'] + 1}, False), ({}, False)):
    with open(table.eval_path(run), 'w') as f:
      json.dump({'feature_net': net, 'fid': {'samples': 1.0}}, f)
    assert (table.evaluated(run) is not None) == finished
  assert 'fid' not in table.record(run)  # the last one, from no known network


def test_a_group_split_by_a_damaged_checkpoint_is_grouped_again_and_every_member_finishes(
    data_dir, monkeypatch):
  """Restoring B set its damaged checkpoint 4 aside (train_group returned None); B stands at 2,
  A still at 4: both must still be trained to their end in this session."""
  config = tiny_config(data_dir, **{'train.steps': 6})
  runs = [plan.Run(point=0, seed=s, overrides={}, config=config, workdir=w)
          for s, w in ((0, 'A'), (1, 'B'))]
  steps, calls = {'A': 4, 'B': 4}, []

  def train_group(configs, workdirs):
    calls.append((tuple(workdirs), steps[workdirs[0]]))
    if len(calls) == 1:
      steps['B'] = 2  # its checkpoint 4 was damaged and set aside
      return None
    steps.update({w: 6 for w in workdirs})
    return []
  monkeypatch.setattr(training, 'train_group', train_group)
  monkeypatch.setattr(sweep, 'latest_step', lambda workdir: steps[workdir])
  monkeypatch.setattr(training, 'diverged_at', lambda workdir: None)
  sweep.train_piece(runs)
  assert calls == [(('A', 'B'), 4), (('B',), 2), (('A',), 4)] and steps == {'A': 6, 'B': 6}
