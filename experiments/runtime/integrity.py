"""What makes a restored checkpoint trustworthy: a sha256 of every array, saved with it, and finite values.

Orbax and tensorstore detect some damage (a broken index, a truncated file) but not all: a few
flipped bytes inside an array's data restore "successfully" as other numbers. The digests are
computed from the arrays in memory just before saving and travel inside the checkpoint's own
metadata (written atomically with it), so any later change to the array files is caught.
"""
import hashlib

import jax
import numpy as np


def path_name(path) -> str:
  """'params/params/init_conv/conv/kernel' for a jax key path."""
  parts = []
  for key in path:
    parts.append(str(getattr(key, 'name', getattr(key, 'key', getattr(key, 'idx', key)))))
  return '/'.join(parts)


def host_copy(x) -> np.ndarray | None:
  """A numpy copy of `x`, or None when this process holds only part of it (a sharded array)."""
  if isinstance(x, jax.Array):
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return None
  return np.asarray(x)


def _digest(a: np.ndarray) -> str:
  h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
  h.update(np.ascontiguousarray(a).data)
  return h.hexdigest()


def _host_arrays(tree) -> dict[str, np.ndarray | None]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(path): host_copy(leaf) for path, leaf in flat}


def digests(tree) -> dict[str, str]:
  """{array path: sha256 of its dtype, shape and bytes} for every array this process holds whole."""
  return {name: _digest(a) for name, a in _host_arrays(tree).items() if a is not None}


def fingerprint(tree) -> str:
  """One sha256 for a whole tree of replicated arrays (its arrays' digests, by path): which
  weights a refiner was fine-tuned from."""
  return hashlib.sha256(repr(sorted(digests(tree).items())).encode()).hexdigest()


def problems(tree, expected: dict[str, str] | None) -> list[str]:
  """What is wrong with a restored `tree`: non-finite values, and arrays whose sha256 differs from
  the one saved with them (`expected`; None for checkpoints saved without digests)."""
  arrays, found = _host_arrays(tree), []
  for name, a in arrays.items():
    if a is None:
      continue
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      found.append(f'{name} holds {int(np.sum(~np.isfinite(a)))} non-finite values')
    elif expected is not None and name in expected and expected[name] != _digest(a):
      found.append(f'{name} differs from the sha256 saved with it')
  if expected is not None:
    found += [f'{name} was saved but not restored' for name in sorted(set(expected) - set(arrays))]
  return found
