"""Orbax checkpoints in <workdir>/checkpoints: atomic saves, checked restores, resume from the latest.

Orbax writes each step to a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest. Nothing is saved unless the loss
of the steps it holds was finite (the caller checks first). Every save carries the sha256 of
each array in its metadata; a restore checks it, the shapes and that every value is finite,
and falls back to the previous checkpoint, with a warning, when the newest one fails.
"""
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from experiments.runtime import files, integrity

DAMAGED = 'checkpoints_damaged'  # beside checkpoints/: where training moves checkpoints it skipped


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved, or no checkpoint in the workdir can be trusted."""


class _Damaged(Exception):
  """One checkpoint failed its checks; the message says how."""


def _save_replicas_whole_on_cpu() -> None:
  """On CPU, write each replicated array from one device instead of a slice from every device.

  Orbax's replica-parallel default slices every array with one eager op per slice, each compiled
  on first use: with 8 CPU devices the first save took 16 s instead of 2, too slow for a save
  between SIGTERM and the kill. GPU backends already default to whole replicas.
  """
  if jax.default_backend() != 'cpu':
    return
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(current, 'sprites_whole_replicas', False):
    return
  handler = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False,
      array_metadata_store=getattr(current, '_array_metadata_store', None))  # keep its layout
  handler.sprites_whole_replicas = True
  ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def manager(workdir: str, keep: int, keep_every: int = 0, create: bool = True,
            keep_steps: tuple[int, ...] = (), folder: str = 'checkpoints') -> ocp.CheckpointManager:
  """Keeps the `keep` latest checkpoints, and for good every one at a multiple of `keep_every`
  and those of `keep_steps` (autoguidance's guide). create=False for readers: a mistyped
  --workdir is then refused without leaving a folder there. `folder`: where in the workdir
  (runtime/refiner.py keeps its own)."""
  _save_replicas_whole_on_cpu()
  if keep < 1 or keep_every < 0:
    raise ValueError(f'train.keep_checkpoints={keep} must be >= 1 and train.keep_every='
                     f'{keep_every} >= 0 (0: keep no extra ones).')
  policies = ocp.checkpoint_managers
  keep_policies = [policies.LatestN(n=keep)]
  if keep_every:
    keep_policies.append(policies.EveryNSteps(interval_steps=keep_every))
  if keep_steps:
    keep_policies.append(policies.CustomSteps(steps=list(keep_steps)))
  options = ocp.CheckpointManagerOptions(
      create=create, enable_async_checkpointing=False,
      preservation_policy=policies.AnyPreservationPolicy(keep_policies))
  # Naming the handler lets a fresh manager read a checkpoint's metadata before restoring.
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), folder),
                               options=options, item_handlers=ocp.StandardCheckpointHandler())


def _shapes(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {integrity.path_name(path): tuple(leaf.shape) for path, leaf in flat}


def check_compatible(directory, saved_tree, abstract_state) -> None:
  """Raise if `saved_tree` (a checkpoint's metadata) holds another model than `abstract_state`."""
  saved, wanted = _shapes(saved_tree), _shapes(abstract_state)
  differ = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  diffs = [f'{k}: saved {saved.get(k)} vs configured {wanted.get(k)}' for k in differ]
  if differ and all(k.startswith('opt_state') for k in differ):
    raise ValueError(
        f'{directory} holds checkpoints of this network, but its optimizer state has another '
        f'structure ({len(diffs)} arrays differ, e.g. {diffs[0]}): train.grad_clip and '
        'train.weight_decay, each on (> 0) or off, shape it. The checkpoints were left untouched; '
        'resume with the values that trained them (config.json), or use another --workdir.')
  if diffs:
    raise ValueError(
        f'{directory} holds checkpoints of a different model than this config '
        f'({len(diffs)} arrays differ, e.g. {diffs[0]}). The checkpoints were left untouched; '
        'use another --workdir, or the config that trained them.')


def short_error(error: BaseException) -> str:
  lines = str(error).strip().splitlines() or ['']
  text = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + '...'
  return f'{type(error).__name__}: {text}'


def custom_metadata(mngr, step: int) -> dict:
  """What `save` stored beside the arrays of checkpoint `step`; {} if it cannot be read (the
  caller says what that means for it)."""
  try:
    return dict(mngr.metadata(step).custom_metadata or {})
  except Exception:  # pylint: disable=broad-except  # a damaged checkpoint: restore_step reports it
    return {}


def _metadata(mngr, step: int):
  """(array tree metadata, saved digests or None); a failure to read them means damage."""
  try:
    metadata = mngr.metadata(step)  # one read for both: each costs a pass over every array
    tree, custom = metadata.item_metadata.tree, metadata.custom_metadata or {}
    _shapes(tree)
  except Exception as e:  # any failure to read a checkpoint makes it unusable, whatever raised
    raise _Damaged(f'its metadata cannot be read ({short_error(e)})') from e
  return tree, custom.get('sha256')


def _restore_checked(mngr, step: int, abstract_state):
  """The checkpoint at `step`, checked; raises _Damaged, or ValueError for another model."""
  tree, expected = _metadata(mngr, step)
  check_compatible(mngr.directory, tree, abstract_state)
  try:
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # tensorstore and orbax raise many types for damaged files
    raise _Damaged(f'reading it failed ({short_error(e)})') from e
  found = integrity.problems(state, expected)
  saved_steps = integrity.host_copy(getattr(state, 'step', step))
  if saved_steps is not None and not np.all(saved_steps == step):
    found.append(f'it holds step {np.unique(saved_steps).tolist()}')
  if found:
    raise _Damaged('; '.join(found[:3]) + (f' (and {len(found) - 3} more)' if len(found) > 3 else ''))
  if expected is None:
    logging.warning('Checkpoint %d in %s has no sha256 digests (saved by an older version): '
                    'restored after checking shapes and finite values only.', step, mngr.directory)
  return state


def restore_step(mngr: ocp.CheckpointManager, step: int, abstract_state, *, why: str, fix: str):
  """The checkpoint at `step`, checked; a missing or damaged one is a CheckpointError that says
  `why` it was needed, what the workdir holds, and the `fix`."""
  steps = sorted(mngr.all_steps())
  if step not in steps:
    raise CheckpointError(f'{why}, but {mngr.directory} has no checkpoint of step {step} (it holds '
                          f'{", ".join(map(str, steps)) or "none"}): {fix}.')
  try:
    return _restore_checked(mngr, step, abstract_state)
  except _Damaged as e:
    raise CheckpointError(f'{why}, but its checkpoint in {mngr.directory} cannot be trusted: {e}. '
                          f'{fix[0].upper() + fix[1:]}.') from e


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, *, set_aside: bool = False):
  """The newest checkpoint that passes its checks, restored into abstract_state's structure and
  shardings, or None if there is none. Newer ones that fail are skipped with a warning, and moved
  to <workdir>/checkpoints_damaged when `set_aside` (training, which will save those steps again).
  """
  skipped = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = _restore_checked(mngr, step, abstract_state)
    except _Damaged as e:
      logging.warning('Checkpoint %d in %s skipped: %s.', step, mngr.directory, e)
      skipped.append((step, str(e)))
      continue
    if skipped:
      _after_fallback(mngr, skipped, step, set_aside)
    return state
  if skipped:
    raise CheckpointError(
        f'No checkpoint in {mngr.directory} can be trusted: '
        + '; '.join(f'step {s}: {why}' for s, why in skipped)
        + '. Nothing was changed. Restore them from a backup, or move that folder away (or use '
        'another --workdir) to train from step 0.')
  return None


def _after_fallback(mngr, skipped: list, step: int, set_aside: bool) -> None:
  names = ', '.join(str(s) for s, _ in skipped)
  if not set_aside:
    logging.warning('Using checkpoint %d instead of %s (see above).', step, names)
    return
  target = os.path.join(os.path.dirname(mngr.directory), DAMAGED)
  if files.is_writer():
    for s, why in skipped:
      dest = os.path.join(target, f'{s}')
      while os.path.exists(dest):
        dest += '+'
      os.makedirs(target, exist_ok=True)
      shutil.move(os.path.join(mngr.directory, str(s)), dest)
      with open(os.path.join(dest, 'WHY_SKIPPED.txt'), 'w', encoding='utf-8') as f:
        f.write(why + '\n')
  if jax.process_count() > 1:  # every process must see the moves before it saves again
    multihost_utils.sync_global_devices('checkpoints_set_aside')
  mngr.reload()
  logging.warning('Resuming from checkpoint %d; the damaged checkpoint(s) %s were moved to %s '
                  '(kept for inspection, safe to delete).', step, names, target)


def save(mngr: ocp.CheckpointManager, step: int, state, metadata: dict | None = None) -> None:
  """Save `state` at `step` with the sha256 of its arrays (and `metadata`, plain JSON values);
  a failure stops the run, by name."""
  try:
    mngr.save(step, args=ocp.args.StandardSave(state), force=True,
              custom_metadata={**(metadata or {}), 'sha256': integrity.digests(state)})
    mngr.wait_until_finished()
  except Exception as e:  # disk full, permissions, a lost mount: whatever it is, stop here
    kept = [s for s in mngr.all_steps() if s != step]
    raise CheckpointError(
        f'Saving the checkpoint of step {step} in {mngr.directory} failed ({short_error(e)}). '
        f'Earlier checkpoints ({", ".join(map(str, kept)) or "none"}) are untouched; the run '
        'stopped so that no more work is lost. Fix the cause (disk space, permissions) and run '
        'again to resume' + (f' from step {max(kept)}.' if kept else '.')) from e
