"""The workdir: one run at a time, records written only once the checks pass, no duplicate metric
rows, and every config or data check before the first step (none of these tests trains a step)."""
import json
import logging
import os
import re
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from experiments import evaluate, from_config, sample, train
from experiments.data import dataset
from experiments.data.sources import emoji
from experiments.runtime import checkpoints, errors, logs, state as state_lib, trained_with
from experiments.runtime import workdir_lock


def _trained_workdir(tmp_path, step=5, class_names=None):
  """A trained workdir at `step`: a checkpoint (of a stand-in model) and the records."""
  workdir = str(tmp_path / 'run')
  tiny = {'kernel': np.ones((3, 3, 3, 8), np.float32)}  # no check here reads further than shapes
  state = state_lib.TrainState(step=np.asarray(step, np.int32), params=tiny, ema_params=tiny,
                               opt_state=())
  checkpoints.save(checkpoints.manager(workdir, 2), step, state)
  records = {'config.json': {'recorded': 'config'},
             'data.json': {'class_names': class_names or list(emoji.CLASS_NAMES)}}
  for name, value in records.items():
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(value, f)
  return workdir


def _records(workdir):
  return [open(os.path.join(workdir, name)).read() for name in ('config.json', 'data.json')]


def test_a_second_run_in_a_locked_workdir_is_refused_by_name(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.WorkdirBusy,
                       match=f'pid {os.getpid()} on host {socket.gethostname()}.*--workdir'):
      train.run(tiny_config(data_dir), workdir)
  assert not os.path.exists(os.path.join(workdir, workdir_lock.NAME)), 'released on the way out'


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  pid = int(dead.stdout)
  os.makedirs(tmp_path / 'run')
  with open(tmp_path / 'run' / workdir_lock.NAME, 'w') as f:
    json.dump({'pid': pid, 'host': socket.gethostname(), 'command': 'killed'}, f)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(str(tmp_path / 'run')):
      holder = json.load(open(tmp_path / 'run' / workdir_lock.NAME))
  assert holder['pid'] == os.getpid()
  assert any(f'left by pid {pid}' in r.getMessage() for r in caplog.records)


def test_another_model_is_refused_before_the_records_are_touched(tmp_path, data_dir):
  workdir = _trained_workdir(tmp_path)
  before = _records(workdir)
  with pytest.raises(ValueError, match='different model'):
    train.run(tiny_config(data_dir, **{'model.n_feat': 16, 'train.steps': 10}), workdir)
  assert _records(workdir) == before


def test_other_classes_are_refused_before_the_records_are_touched(tmp_path, data_dir):
  workdir = _trained_workdir(tmp_path, class_names=['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'])
  before = _records(workdir)
  with pytest.raises(ValueError, match='trained on classes a, b, c'):
    train.run(tiny_config(data_dir), workdir)
  assert _records(workdir) == before


def test_what_the_weights_mean_must_match_their_record_to_resume_draw_or_evaluate(tmp_path,
                                                                                  data_dir):
  """Shapes alone let another schedule, target or sprite size through: config.json is checked."""
  config = tiny_config(data_dir)
  workdir = _trained_workdir(tmp_path)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f)
  before = _records(workdir)
  with pytest.raises(ValueError, match='trained with diffusion.prediction=eps .*asks for '
                     'diffusion.prediction=v: resuming.*--config.diffusion.prediction=eps'):
    train.run(tiny_config(data_dir, **{'diffusion.prediction': 'v', 'train.steps': 10}), workdir)
  with pytest.raises(ValueError, match='data.image_size=16 .*drawing from it'):
    sample.run(tiny_config(data_dir, **{'data.image_size': 32}), workdir)
  with pytest.raises(ValueError, match='diffusion.schedule=linear .*evaluating it'):
    evaluate.run(tiny_config(data_dir, **{'diffusion.schedule': 'cosine'}), workdir)
  with pytest.raises(ValueError, match=r'--config.model.channel_mult=\(1,2,2,\)'):
    trained_with.check(tiny_config(data_dir, **{'model.channel_mult': (1, 2, 5)}), workdir,
                       trained_with.DRAWING, 'drawing from it')
  # the loss: checked for resuming only
  with pytest.raises(ValueError, match='diffusion.loss_weighting=simple'):
    trained_with.check(tiny_config(data_dir, **{'diffusion.loss_weighting': 'min_snr'}), workdir,
                       trained_with.TRAINING, 'resuming')
  how_it_runs = tiny_config(data_dir, **{'diffusion.loss_weighting': 'min_snr',
                                         'model.dtype': 'bfloat16', 'sample.steps': 9,
                                         'train.learning_rate': 1e-4, 'train.steps': 50})
  trained_with.check(how_it_runs, workdir, trained_with.DRAWING, 'drawing from it')
  # guidance reads the null context: the record's cond_drop_rate decides, not this command's
  unguided = config.to_dict()
  unguided['diffusion']['cond_drop_rate'] = 0.0
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(unguided, f)
  with pytest.raises(ValueError, match='cond_drop_rate=0 .*--config.sample.guidance=0'):
    sample.run(tiny_config(data_dir, **{'sample.guidance': 2.0}), workdir)
  trained_with.check(tiny_config(data_dir, **{'sample.guidance': 0.0}), workdir,
                     trained_with.DRAWING, 'drawing from it')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f)
  trained_with.check(config, workdir, trained_with.TRAINING, 'resuming')
  assert _records(workdir) == before
  assert not os.path.exists(os.path.join(workdir, 'samples'))
  assert not os.path.exists(os.path.join(workdir, 'eval'))


def test_another_optimizer_state_is_named_on_resume(tmp_path, data_dir):
  """The divergence error used to suggest train.grad_clip, which then was refused as 'a different
  model': the network is the same, the optimizer's state is not."""
  workdir = str(tmp_path / 'run')
  train.run(tiny_config(data_dir, **{'train.steps': 1, 'sample.gif': False}), workdir)
  with pytest.raises(ValueError, match='this network, but its optimizer state has another '
                     'structure .*train.grad_clip and train.weight_decay'):
    train.run(tiny_config(data_dir, **{'train.steps': 2, 'train.grad_clip': 1.0}), workdir)


@pytest.mark.parametrize('name', ['config.json', 'data.json'])
def test_a_damaged_record_is_refused_by_name_not_read_as_empty(tmp_path, data_dir, name):
  """Read as {}, a truncated config.json let another schedule resume the weights unchecked, and
  then was overwritten; an empty data.json raised json's own traceback."""
  config = tiny_config(data_dir, **{'train.steps': 10})
  workdir = _trained_workdir(tmp_path)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f)
  path = os.path.join(workdir, name)
  damaged = open(path).read()[:20]
  with open(path, 'w') as f:
    f.write(damaged)
  before = _records(workdir)
  with pytest.raises(ValueError, match=re.escape(path) + ' cannot be read .*Restore the file'):
    train.run(config, workdir)
  assert _records(workdir) == before


def test_train_steps_below_the_checkpoint_is_refused(tmp_path, data_dir):
  workdir = _trained_workdir(tmp_path, step=5)
  os.remove(os.path.join(workdir, 'data.json'))
  with pytest.raises(ValueError, match=r'step 5, past train.steps=2.*--mode=sample'):
    train.run(tiny_config(data_dir, **{'train.steps': 2}), workdir)


def test_unknown_mix_class_and_a_missing_test_split_fail_before_the_first_step(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match="sample.mix: unknown class 'dragons'.*smileys_emotion"):
    train.run(tiny_config(data_dir, **{'sample.mix': 'dragons:1'}), workdir)
  config = tiny_config(data_dir, **{'data.test_fraction': 0.0, 'eval.at_end': True})
  with pytest.raises(ValueError, match='data.test_fraction=0.0 holds none out'):
    train.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
  assert not os.path.exists(os.path.join(workdir, 'config.json'))


def test_sets_too_small_for_the_evaluation_fail_before_the_first_step(tmp_path, data_dir):
  """k-NN precision and recall need sets of more than eval.knn + 1: a tiny held-out split (or
  eval.num_samples) is named before training, with the fix, not after it."""
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='sets of 3 sprites.*eval.knn=3 need at least 5. Raise '
                     'eval.num_samples=3'):
    train.run(tiny_config(data_dir, **{'eval.at_end': True, 'eval.num_samples': 3}), workdir)
  root = tmp_path / 'few'
  rng = np.random.default_rng(0)
  for name in ('cats', 'dogs'):
    (root / name).mkdir(parents=True)
    for k in range(10):
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
          root / name / f'{k}.png')
  few = tiny_config(data_dir, **{'eval.at_end': True, 'data.source': 'folder',
                                 'data.manual_dir': str(root)})
  with pytest.raises(ValueError, match=r"half of the test split's \d+,.*Raise "
                     r'data.test_fraction=0.1 \(the dataset is built again, once\) or add '
                     r'sprites.*eval.at_end=False'):
    train.run(few, workdir)
  assert not os.path.exists(workdir), 'a workdir the refused run made is not left behind'
  with pytest.raises(ValueError, match=r"half of the test split's \d+,"):
    evaluate.run(few, workdir)  # before looking for weights to draw with


@pytest.mark.parametrize('key, value', [
    ('sample.mix', 'food_drink:abc'), ('sample.mix', 'food_drink:5,objects:-3'),
    ('sample.mix', ':0.5'), ('sample.mix', 'a:0,b:0'), ('sample.batch_size', 0),
    ('train.learning_rate', -1e-3), ('train.learning_rate', float('nan')),
    ('train.keep_every', -2), ('seed', -1), ('model.n_feat', 12),
])
def test_bad_values_are_refused_by_name_before_anything_runs(key, value):
  config = tiny_config('unused')
  section, _, name = key.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    from_config.validate(config)


def test_a_resume_drops_the_metric_rows_logged_after_its_checkpoint(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.write(''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in range(1, 6)))
    f.write('{"step": 6, "lo')  # a run killed in the middle of a row
  assert logs.drop_rows_after(path, 3) == 3
  assert [json.loads(line)['step'] for line in open(path)] == [1, 2, 3]


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args: str, module: str = '', env=None) -> subprocess.CompletedProcess:
  """launch.py (or `python -m module`) run as a user runs it, from the repository root; its exit
  code and output."""
  program = ['-m', module] if module else ['launch.py']
  return subprocess.run([sys.executable, *program, *args], cwd=_ROOT, capture_output=True,
                        text=True, check=False, env={**os.environ, **(env or {})})


def test_a_workdir_under_home_is_expanded_not_made_in_a_folder_named_tilde(tmp_path):
  """bash leaves the ~ of --workdir=~/run alone: the launcher expands it, as data.* paths are."""
  done = _launch('--config=configs/sprites.py:smoke', '--workdir=~/run', '--mode=sample',
                 env={'HOME': str(tmp_path)})
  assert done.returncode == 1
  assert f'No checkpoint in {tmp_path}/run/checkpoints' in done.stderr


def test_ctrl_c_outside_training_is_one_line_and_exit_code_130(capsys):
  with pytest.raises(SystemExit) as stopped:
    with errors.reported():
      raise KeyboardInterrupt
  assert stopped.value.code == 130
  assert capsys.readouterr().err.startswith('Stopped by Ctrl-C. Checkpoints are kept')


def test_the_launcher_prints_a_refused_value_without_a_traceback(tmp_path):
  done = _launch('--config=configs/sprites.py:smoke', f'--workdir={tmp_path}',
                 '--config.train.keep_checkpoints=0')
  assert done.returncode == 1
  assert 'Error: train.keep_checkpoints=0: must be >= 1' in done.stderr
  assert 'Traceback' not in done.stderr


def test_a_workdir_through_a_file_is_named_without_a_traceback(tmp_path):
  """The OSError comes from os.makedirs (the standard library) on the project's behalf."""
  (tmp_path / 'notes.txt').write_text('a file, not a folder')
  done = _launch('--config=configs/sprites.py:smoke', f'--workdir={tmp_path / "notes.txt" / "run"}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  assert 'Error: [Errno 20] Not a directory' in done.stderr and 'notes.txt' in done.stderr
  try:
    Image.open(tmp_path / 'missing.png')  # an OSError raised inside a library stays a library's
  except OSError as e:
    assert not errors.is_ours(e)


def test_the_launcher_names_a_misspelled_key_without_a_traceback(tmp_path):
  done = _launch('--config=configs/sprites.py:smoke', f'--workdir={tmp_path}',
                 '--config.train.stepz=3')
  assert done.returncode == 1
  assert "--config.train.stepz: the config has no key 'stepz'" in done.stderr
  assert 'Did you mean "steps"' in done.stderr
  assert 'Traceback' not in done.stderr
  assert not os.listdir(tmp_path)  # refused before anything was written


@pytest.mark.parametrize('config, says', [
    ('configs/sprite.py', 'no config file at'),   # a typo, or run from another folder
    ('configs/sprites.py:cpuu', "Unknown preset 'cpuu'; valid: smoke, cpu"),
    ('configs/base.py:smoke', 'TypeError: get_config() takes 0 positional arguments'),
])
def test_a_missing_config_file_or_preset_is_named_without_a_traceback(tmp_path, config, says):
  done = _launch(f'--config={config}', f'--workdir={tmp_path}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  swept = _launch('--sweep=configs/sweeps/schedules.py', f'--root={tmp_path}', f'--config={config}',
                  module='experiments.sweep')  # the other tools parse their flags the same way
  assert swept.returncode == 1 and 'Traceback' not in swept.stderr
  assert f'--config={config}: {says}' in swept.stderr
  assert f'--config={config}: {says}' in done.stderr
  assert '--config=configs/sprites.py[:preset]' in done.stderr or ':' in config
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('lines, says', [
    (['--config=configs/sprite.py'], '--config=configs/sprite.py: no config file at'),
    (['--config=configs/sprites.py:cpuu'], "--config=configs/sprites.py:cpuu: Unknown preset 'cpuu'"),
    (['--config=configs/sprites.py:smoke', '--config.train.stepz=3'],
     "--config.train.stepz: the config has no key 'stepz'"),
])
def test_a_flagfile_is_checked_like_the_command_line(tmp_path, lines, says):
  given = tmp_path / 'flags.txt'
  given.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  done = _launch(f'--flagfile={given}', f'--workdir={tmp_path / "run"}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  assert says in done.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_an_unreadable_flagfile_is_named_without_a_traceback(tmp_path):
  missing = tmp_path / 'nothere.txt'  # read as the config flag is defined, at import
  done = _launch(f'--flagfile={missing}', f'--workdir={tmp_path / "run"}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  assert 'Unable to open flagfile' in done.stderr and str(missing) in done.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_divergence_before_any_checkpoint_says_so(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), 2)
  with pytest.raises(FloatingPointError, match='No checkpoint was saved yet') as error:
    train._check_finite({'loss': float('nan')}, 7, mngr)  # pylint: disable=protected-access
  assert 'None' not in str(error.value)


def test_an_attribute_error_inside_a_config_file_is_not_called_a_missing_key(tmp_path):
  config_file = tmp_path / 'broken.py'
  config_file.write_text('def get_config():\n  return None.steps\n')
  done = _launch(f'--config={config_file}', f'--workdir={tmp_path / "run"}')
  assert done.returncode != 0
  assert 'has no key' not in done.stderr
  assert "'NoneType' object has no attribute 'steps'" in done.stderr


def test_a_workdir_inside_a_sprite_folder_is_refused_before_anything_is_written(tmp_path):
  """The folder source reads every image under its folder: a run's samples there would become
  sprites of a class 'run' on the next load."""
  image = np.full((16, 16, 3), 255, np.uint8)
  for name in ('cats/a.png', 'dogs/b.png'):
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    Image.fromarray(image).save(tmp_path / name)
  done = _launch('--config=configs/sprites.py:smoke', f'--workdir={tmp_path / "run"}',
                 '--config.data.source=folder', f'--config.data.manual_dir={tmp_path}',
                 f'--config.data.data_dir={tmp_path.parent / "tfds"}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  assert f'--workdir={tmp_path / "run"} is inside data.manual_dir={tmp_path}' in done.stderr
  assert sorted(os.listdir(tmp_path)) == ['cats', 'dogs']
  cfg = ml_collections.ConfigDict({'source': 'folder', 'manual_dir': str(tmp_path),
                                   'data_dir': str(tmp_path / 'tfds')})
  with pytest.raises(ValueError, match='data.data_dir=.* is inside data.manual_dir'):
    dataset.check_outputs_outside(cfg, str(tmp_path.parent / 'elsewhere'))
  dataset.check_outputs_outside(ml_collections.ConfigDict(  # no folder given: the build says so
      {'source': 'folder', 'manual_dir': '', 'data_dir': 'tfds'}), 'runs/x')
  dataset.check_outputs_outside(ml_collections.ConfigDict(  # a sheet file, or another source
      {'source': 'course', 'manual_dir': str(tmp_path), 'data_dir': str(tmp_path)}), str(tmp_path))


def test_another_training_split_is_refused_for_resuming_and_evaluating(tmp_path, data_dir):
  """data.json records the training split's fingerprint: an edited folder or another test_fraction
  must not resume on other sprites, nor judge the model against sprites it may have learnt."""
  config = tiny_config(data_dir)
  train_set = dataset.load(config.data, 'train')
  workdir = _trained_workdir(tmp_path)
  recorded = dataset.record(train_set)
  assert recorded['train_digest'] == dataset.digest(dataset.SpriteData(  # any order, same digest
      train_set.images[::-1], train_set.labels[::-1], train_set.groups, train_set.class_names))
  fewer = dataset.SpriteData(train_set.images[1:], train_set.labels[1:], train_set.groups[1:],
                             train_set.class_names)
  with open(os.path.join(workdir, 'data.json'), 'w') as f:
    json.dump(dataset.record(fewer), f)
  before = _records(workdir)
  with pytest.raises(ValueError, match=f'trained on another training split \\({len(fewer.images)} '
                     'sprites.*resuming would train on other sprites'):
    train.run(config, workdir)
  with pytest.raises(ValueError, match='another training split.*held-out sprites may include'):
    evaluate.run(config, workdir)
  assert _records(workdir) == before and not os.path.exists(os.path.join(workdir, 'eval'))
  older = dict(dataset.record(fewer), dataset_version='1.3.0')  # a split by an older grouping
  with open(os.path.join(workdir, 'data.json'), 'w') as f:
    json.dump(older, f)
  with pytest.raises(ValueError, match=r'groups variants anew \(dataset version 1\.3\.0 then'):
    evaluate.run(config, workdir)
  with open(os.path.join(workdir, 'data.json'), 'w') as f:
    json.dump(recorded, f)
  dataset.check_trained_on(workdir, train_set, 'unused')  # the same split passes
