"""Checkpoints: damaged ones are skipped for the previous one, a failed save stops the run clearly,
the latest K plus every Mth are kept. States are built, not trained, so these tests are quick."""
import glob
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from experiments import from_config
from experiments.runtime import checkpoints, drawing, integrity, parallel, state as state_lib


def _toy_state(step: int, poison: bool = False) -> state_lib.TrainState:
  """A train state of a few replicated arrays: restores cost per array, and the checks do not
  depend on the model (test_workdir and test_preemption restore real ones)."""
  rep = parallel.replicated(parallel.make_mesh())
  noise = np.random.default_rng(step).normal(size=(3, 3, 8, 64)).astype(np.float32)
  params = {'conv': {'kernel': noise, 'bias': np.full(8, 0.1 * step, np.float32)}}
  if poison:
    params['conv']['bias'][3] = np.nan
  tree = state_lib.TrainState(step=np.asarray(step, np.int32), params=params,
                              ema_params=jax.tree.map(np.copy, params),
                              opt_state=(np.asarray(step, np.int32), jax.tree.map(np.zeros_like, params)))
  return jax.device_put(tree, rep)


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        _toy_state(0))


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  """Workdirs with checkpoints 1 and 2: good ones, step 2 NaN, saved without digests, and step 2
  saved with the digests of other (finite, same-shaped) arrays: what a silent bit flip looks like."""
  workdirs = {}
  for name in ('good', 'nan_at_2', 'no_digests', 'wrong_digest_at_2'):
    workdirs[name] = str(tmp_path_factory.mktemp(name))
    mngr = checkpoints.manager(workdirs[name], 5)
    for step in (1, 2):
      saved = _toy_state(step, poison=name == 'nan_at_2' and step == 2)
      if name == 'no_digests':  # as versions before the digests saved them
        mngr.save(step, args=ocp.args.StandardSave(saved), force=True)
      elif name == 'wrong_digest_at_2' and step == 2:
        mngr.save(step, args=ocp.args.StandardSave(saved), force=True,
                  custom_metadata={'sha256': integrity.digests(_toy_state(3))})
        mngr.wait_until_finished()
      else:
        checkpoints.save(mngr, step, saved)
  return workdirs


def _copy(pristine, tmp_path, name='good'):
  workdir = str(tmp_path / 'run')
  shutil.copytree(pristine[name], workdir)
  return workdir


def _restore(workdir, set_aside=False):
  return checkpoints.restore_latest(checkpoints.manager(workdir, 5), ABSTRACT, set_aside=set_aside)


def _data_files(workdir, step):
  """The array data files of a checkpoint (not its index), largest first."""
  found = glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'default', 'ocdbt.process_*',
                                 'd', '*'))
  return sorted(found, key=os.path.getsize, reverse=True)


def _flip_bytes(path, mask=0x5A):
  data = bytearray(open(path, 'rb').read())
  for i in range(len(data) // 3, len(data) // 3 + 4):
    data[i] ^= mask
  open(path, 'wb').write(bytes(data))


def _flip_low_bits(path):
  """The lowest bit of 4 bytes. The data files are compressed and orbax lays arrays out in them
  in no fixed order, so what this does varies: a read error, garbage that is not finite, or other
  finite numbers that only the digests tell apart (that case is pinned by the test below)."""
  _flip_bytes(path, 0x01)


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _overwrite_metadata(workdir):
  with open(os.path.join(workdir, 'checkpoints', '2', 'default', '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": ')


@pytest.mark.parametrize('damage, why', [
    (lambda w: _flip_low_bits(_data_files(w, 2)[0]), 'differs from the sha256|non-finite|reading'),
    (lambda w: _truncate(_data_files(w, 2)[0]), 'reading it failed'),
    (lambda w: [os.remove(p) for p in _data_files(w, 2)], 'metadata cannot be read|reading it'),
    (_overwrite_metadata, 'metadata cannot be read'),
], ids=['flipped_bytes', 'truncated_file', 'deleted_files', 'overwritten_metadata'])
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


def test_arrays_that_differ_from_their_saved_digests_are_not_restored(pristine, tmp_path, caplog):
  workdir = _copy(pristine, tmp_path, 'wrong_digest_at_2')
  with caplog.at_level(logging.WARNING):
    assert int(_restore(workdir).step) == 1
  skipped = [r.getMessage() for r in caplog.records if 'Checkpoint 2' in r.getMessage()]
  assert skipped and re.search('differs from the sha256 saved with it', skipped[0]), skipped


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


def test_checkpoints_saved_without_digests_still_restore_with_a_warning(pristine, tmp_path, caplog):
  workdir = _copy(pristine, tmp_path, 'no_digests')
  with caplog.at_level(logging.WARNING):
    assert int(_restore(workdir).step) == 2
  assert any('no sha256 digests' in r.getMessage() for r in caplog.records)


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
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'step 3 .*No space left.*\(1, 2\) are untouched.*from step 2'):
    checkpoints.save(mngr, 3, _toy_state(3))
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


def test_reading_a_workdir_without_checkpoints_creates_no_folder(tmp_path):
  """A mistyped --workdir for --mode=sample or eval is refused, and leaves nothing behind."""
  config, missing = tiny_config(str(tmp_path / 'data')), tmp_path / 'typo'
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    drawing.restore_params(str(missing), parallel.make_mesh(), True,
                           **from_config.state_kwargs(config, 8))
  assert checkpoints.manager(str(missing), 1, create=False).latest_step() is None
  assert not missing.exists()
