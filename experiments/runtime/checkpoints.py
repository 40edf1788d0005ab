"""Orbax checkpoints in <workdir>/checkpoints: atomic saves, resume from the latest.

Orbax writes each step to a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest. Nothing is saved unless the loss
of the steps it holds was finite (the caller checks first).
"""
import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  # Naming the handler lets a fresh manager read a checkpoint's metadata before restoring.
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_handlers=ocp.StandardCheckpointHandler())


def _path_name(path) -> str:
  parts = []
  for key in path:
    parts.append(str(getattr(key, 'name', getattr(key, 'key', getattr(key, 'idx', key)))))
  return '/'.join(parts)


def _shapes(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_name(path): tuple(leaf.shape) for path, leaf in flat}


def check_compatible(mngr: ocp.CheckpointManager, step: int, abstract_state) -> None:
  """Raise if the checkpoint at `step` holds another model than `abstract_state` describes."""
  saved = _shapes(mngr.item_metadata(step).tree)
  wanted = _shapes(abstract_state)
  diffs = [f'{k}: saved {saved.get(k)} vs configured {wanted.get(k)}'
           for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  if diffs:
    raise ValueError(
        f'{mngr.directory} holds checkpoints of a different model than this config '
        f'({len(diffs)} arrays differ, e.g. {diffs[0]}). The checkpoints were left untouched; '
        'use another --workdir, or the config that trained them.')


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """The latest checkpoint restored into abstract_state's structure and shardings, or None."""
  step = mngr.latest_step()
  if step is None:
    return None
  check_compatible(mngr, step, abstract_state)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
