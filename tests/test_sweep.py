"""Sweeps: overrides checked up front, one training per distinct model, a table from eval.json."""
import json
import os

import pytest

from conftest import tiny_config
from experiments import sweep

QUICK = {'eval.feature_steps': 20, 'eval.repeats': 2, 'eval.num_samples': 16,
         'eval.nearest_shown': 4, 'sample.gif': False, 'sample.sheet': False}


def _config(data_dir):
  config = tiny_config(data_dir)
  for key, value in QUICK.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def test_sampling_only_overrides_share_one_trained_model(tmp_path, data_dir):
  base = _config(data_dir)
  runs = [{'sample.steps': 2}, {'sample.steps': 3}, {'diffusion.prediction': 'v'}]
  rows = []
  for overrides in runs:
    config = sweep.apply(base, overrides)
    workdir = str(tmp_path / sweep.train_slug(overrides))
    sweep.run_one(config, workdir)
    rows.append(sweep.row(overrides, config, workdir))
  assert sorted(os.listdir(tmp_path)) == ['base', 'diffusion.prediction=v']
  # Trained once: one metrics line per step, not two runs' worth.
  lines = open(tmp_path / 'base' / 'metrics.jsonl').read().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [1, 2]
  evaluated = sorted(os.listdir(tmp_path / 'base' / 'eval'))
  assert evaluated == [f'step000002_ddim{n}{suffix}' for n in (2, 3)
                       for suffix in ('.json', '_nearest.png', '_samples.npz')]
  assert all(r['samples'] == 16 and r['fid'] > 0 for r in rows)
  table = sweep.markdown(rows)
  assert 'sample.steps=3' in table and 'diffusion.prediction=v' in table


def test_unknown_override_fails_before_any_run(data_dir):
  with pytest.raises(KeyError, match='diffusion.schedul'):
    sweep.apply(_config(data_dir), {'diffusion.schedul': 'cosine'})


def test_sweep_files_load_and_apply(data_dir):
  base = _config(data_dir)
  for name in ('schedules', 'predictions', 'samplers'):
    path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'sweeps', f'{name}.py')
    for overrides in sweep.load_sweep(path):
      sweep.apply(base, overrides)
