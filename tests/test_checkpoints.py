"""Checkpoints: damaged ones are skipped for the previous one, a failed save stops the run clearly,
the latest K plus every Mth are kept. States are built, not trained, so these tests are quick."""
import glob
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from experiments import from_config
from experiments.runtime import checkpoints, parallel, state as state_lib


def _kwargs():
  return from_config.state_kwargs(tiny_config('unused'), 8)


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  """A workdir with checkpoints 1 and 2 of a fresh tiny state, and one whose step 2 is NaN."""
  state = state_lib.create(mesh=parallel.make_mesh(), **_kwargs())
  workdirs = {}
  for name, poison in (('good', False), ('nan_at_2', True)):
    workdirs[name] = str(tmp_path_factory.mktemp(name))
    mngr = checkpoints.manager(workdirs[name], 5)
    for step in (1, 2):
      saved = state.replace(step=jnp.asarray(step, jnp.int32))
      if poison and step == 2:
        saved = saved.replace(params=jax.tree.map(lambda x: x * jnp.nan, saved.params))
      checkpoints.save(mngr, step, saved)
  return workdirs


def _copy(pristine, tmp_path, name='good'):
  workdir = str(tmp_path / 'run')
  shutil.copytree(pristine[name], workdir)
  return workdir


def _restore(workdir, set_aside=False):
  return state_lib.create_or_restore(mesh=parallel.make_mesh(), mngr=checkpoints.manager(workdir, 5),
                                     must_exist=True, set_aside=set_aside, **_kwargs())


def _data_files(workdir, step):
  """The array data files of a checkpoint, largest first (the ones holding parameters)."""
  found = glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'default', '**', 'd', '*'),
                    recursive=True)
  return sorted(found, key=os.path.getsize, reverse=True)


def _flip_bytes(path):
  data = bytearray(open(path, 'rb').read())
  for i in range(len(data) // 3, len(data) // 3 + 4):
    data[i] ^= 0x5A
  open(path, 'wb').write(bytes(data))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _overwrite_metadata(workdir):
  with open(os.path.join(workdir, 'checkpoints', '2', 'default', '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": ')


@pytest.mark.parametrize('damage, why', [
    (lambda w: _flip_bytes(_data_files(w, 2)[0]), 'sha256|non-finite|reading it failed'),
    (lambda w: _truncate(_data_files(w, 2)[0]), 'reading it failed|sha256'),
    (lambda w: [os.remove(p) for p in _data_files(w, 2)], 'metadata cannot be read|reading it'),
    (_overwrite_metadata, 'metadata cannot be read'),
])
def test_a_damaged_newest_checkpoint_restores_the_previous_one(pristine, tmp_path, caplog, damage,
                                                               why):
  workdir = _copy(pristine, tmp_path)
  damage(workdir)
  with caplog.at_level(logging.WARNING):
    state = _restore(workdir)
  assert int(state.step) == 1
  skipped = [r.getMessage() for r in caplog.records if 'Checkpoint 2' in r.getMessage()]
  assert skipped and 'skipped' in skipped[0]
  assert re.search(why, skipped[0]), skipped[0]


def test_training_moves_damaged_checkpoints_aside(pristine, tmp_path):
  workdir = _copy(pristine, tmp_path)
  _flip_bytes(_data_files(workdir, 2)[0])
  assert int(_restore(workdir, set_aside=True).step) == 1
  assert checkpoints.manager(workdir, 5).all_steps() == [1]
  why = open(os.path.join(workdir, checkpoints.DAMAGED, '2', 'WHY_SKIPPED.txt')).read()
  assert why.strip()


def test_non_finite_parameters_are_not_restored(pristine, tmp_path, caplog):
  workdir = _copy(pristine, tmp_path, 'nan_at_2')
  with caplog.at_level(logging.WARNING):
    assert int(_restore(workdir).step) == 1
  assert any('non-finite' in r.getMessage() for r in caplog.records)


def test_no_trustworthy_checkpoint_is_an_error_that_names_each(pristine, tmp_path):
  workdir = _copy(pristine, tmp_path)
  for step in (1, 2):
    _flip_bytes(_data_files(workdir, step)[0])
  with pytest.raises(checkpoints.CheckpointError, match='step 2: .*step 1: .*Nothing was changed'):
    _restore(workdir, set_aside=True)
  assert checkpoints.manager(workdir, 5).all_steps() == [1, 2]


def test_a_failed_save_stops_clearly_and_keeps_earlier_checkpoints(pristine, tmp_path, monkeypatch):
  workdir = _copy(pristine, tmp_path)
  mngr = checkpoints.manager(workdir, 2)

  def disk_full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full)
  state = _restore(workdir)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'step 3 .*No space left.*\(1, 2\) are untouched.*from step 2'):
    checkpoints.save(mngr, 3, state.replace(step=jnp.asarray(3, jnp.int32)))
  monkeypatch.undo()
  assert int(_restore(workdir).step) == 2


def test_keeps_the_latest_k_and_every_mth_for_good(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), 2, keep_every=4)
  for step in range(1, 11):
    checkpoints.save(mngr, step, {'w': np.full(3, step, np.float32)})
  assert mngr.all_steps() == [4, 8, 9, 10]


@pytest.mark.parametrize('keep', [0, -1])
def test_keep_checkpoints_below_one_is_refused_by_name(keep):
  config = tiny_config('unused', **{'train.keep_checkpoints': keep})
  with pytest.raises(ValueError, match='train.keep_checkpoints'):
    from_config.validate(config)
