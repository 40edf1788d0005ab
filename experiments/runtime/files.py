"""Who writes, and how: process 0 alone writes files and logs; JSON lands whole or not at all."""
import json
import os

import jax


def is_writer() -> bool:
  """True in the one process that writes outputs (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def read_json(path: str) -> dict:
  """The JSON object at `path`, or {} when there is none or it cannot be read."""
  try:
    return read_record(path)
  except ValueError:
    return {}


def read_record(path: str) -> dict:
  """A workdir's record (config.json, data.json): {} when there is none; a damaged one is an error
  that names it, since the checks it feeds would otherwise pass without a word."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read ({e}): the checks that keep a workdir\'s weights '
                     'and data together need it. Restore the file, or use another --workdir. '
                     'Nothing in the workdir was changed.') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path} holds no JSON object: restore it, or use another --workdir.')
  return value


def temporary(path: str) -> str:
  """Where to write `path` before renaming it into place: beside it, unique to this process (two
  processes, sweep shards say, may write one file at once) and with its extension (writers that
  pick the format from the name)."""
  root, ext = os.path.splitext(path)
  return f'{root}.tmp-{os.getpid()}{ext}'


def write_bytes(path: str, data: bytes) -> None:
  """`data` at `path`, written to a temporary file and renamed into place, so a crash never
  leaves a half-written file. Call it from the writing process only."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = temporary(path)
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  """`text` as UTF-8 at `path`, whole or not at all (write_bytes)."""
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str, value) -> None:
  """`value` as indented JSON at `path`, whole or not at all (write_text)."""
  write_text(path, json.dumps(value, indent=2))
