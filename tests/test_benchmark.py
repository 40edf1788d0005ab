"""The benchmark's plumbing: its figures come from real steps, and ratios pair like with like."""
import json
import math
import sys

import pytest

from conftest import tiny_config
from experiments import benchmark


def test_train_and_sample_figures_from_real_steps(data_dir):
  config = tiny_config(data_dir)
  config.train.batch_size = 8  # divides the 8 fake devices
  train = benchmark.train_speed(config, 'tiny', steps=4, per_dispatch=2, num_classes=3)
  assert train['steps'] == 4 and train['img_per_s'] > 0 and math.isfinite(train['loss'])
  assert train['num_devices'] == 8 and train['jax']
  sample = benchmark.sample_speed(config, 'ddim', steps=3, n=5)
  assert sample['n'] == 8  # rounded up to a whole number of sprites per device
  assert sample['sprites_per_s'] > 0 and sample['seconds'] > 0


def test_ratios_pair_only_settings_both_sides_measured(capsys):
  ours = [{'what': 'train', 'model': 'course', 'batch': 100, 'dtype': 'float32', 'img_per_s': 30.0},
          {'what': 'train', 'model': 'course', 'batch': 100, 'dtype': 'float32', 'img_per_s': 60.0},
          {'what': 'sample', 'sampler': 'ddim', 'dtype': 'float32', 'sprites_per_s': 8.0}]
  peer = [{'what': 'train', 'batch': 100, 'amp': False, 'img_per_s': 20.0},
          {'what': 'train', 'batch': 1000, 'amp': True, 'img_per_s': 50.0},
          {'what': 'sample', 'sampler': 'ddim', 'amp': False, 'sprites_per_s': 2.0}]
  benchmark.ratios(ours, peer)
  lines = {r['setting']: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
  assert lines['train batch 100 fp32 (course setting)']['ratio'] == 3.0  # our best over theirs
  assert lines['train best of each']['ratio'] == 60.0 / 50.0
  assert lines['sample DDIM-25 fp32']['ratio'] == 4.0
  assert 'train batch 1000 bf16' not in lines and 'sample DDPM-500 fp32' not in lines


def test_peer_runs_in_the_mode_asked_for(tmp_path, capsys):
  script = tmp_path / 'peer.py'
  script.write_text('import json, sys\nprint("peer says hello")\n'
                    'print(json.dumps({"what": "train", "mode": sys.argv[1:]}))\n')
  lines = benchmark.run_peer(str(script), sys.executable, 'train100')
  assert lines == [{'what': 'train', 'mode': ['train100']}]  # non-JSON lines dropped
  assert json.loads(capsys.readouterr().out)['impl'] == 'torch-peer'
  assert benchmark.run_peer(str(script), sys.executable, '')[0]['mode'] == []


def test_models_figure_counts_every_model(data_dir):
  config = tiny_config(data_dir)
  config.train.batch_size = 8
  line = benchmark.models_speed(config, models=2, steps=2, per_dispatch=1, num_classes=3)
  assert line['models'] == 2 and line['steps'] == 2
  assert line['model_img_per_s'] == pytest.approx(2 * line['img_per_s_each'])
