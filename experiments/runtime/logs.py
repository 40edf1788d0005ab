"""Metrics to metrics.jsonl and TensorBoard (tensorboardX: no TensorFlow), and a progress line."""
import json
import os
import time

from absl import logging

from experiments.runtime import files


def drop_rows_after(path: str, step: int) -> int:
  """Keep the rows of metrics.jsonl up to `step` (where a run resumes, so it writes the later ones
  again) and drop unreadable ones (a run killed mid-write); returns how many were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      if int(json.loads(line)['step']) <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  if len(kept) < len(lines):
    files.write_text(path, ''.join(line + '\n' for line in kept))
  return len(lines) - len(kept)


class Writer:
  """Writes scalars from process 0 only; other processes get a writer that does nothing.

  A run that starts at `first_step` (a resume) first drops the rows logged after it, in
  metrics.jsonl and in TensorBoard, so no step appears twice.
  """

  def __init__(self, workdir: str, first_step: int = 0):
    self._active = files.is_writer()
    self._jsonl = self._tb = None
    if self._active:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      dropped = drop_rows_after(path, first_step)
      if dropped:
        logging.info('Dropped %d rows of %s logged after step %d.', dropped, path, first_step)
      self._jsonl = open(path, 'a', encoding='utf-8')
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=first_step + 1)

  def scalars(self, step: int, values: dict) -> None:
    if not self._active:
      return
    values = {k: float(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({'step': step, 'time': time.time(), **values}) + '\n')
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


def duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  return f'{h}h{rest // 60:02d}m' if h else f'{rest // 60}m{rest % 60:02d}s'


class Progress:
  """step, loss, img/s and ETA, measured between log steps (compile time excluded after the first)."""

  def __init__(self, first_step: int, total_steps: int, batch_size: int):
    self.total, self.batch = total_steps, batch_size
    self._step, self._time = first_step, time.perf_counter()

  def update(self, step: int, loss: float) -> dict:
    now = time.perf_counter()
    rate = (step - self._step) * self.batch / max(now - self._time, 1e-9)
    eta = (self.total - step) * self.batch / max(rate, 1e-9)
    logging.info('step %d/%d  loss %.4f  %.0f img/s  ETA %s', step, self.total, loss, rate,
                 duration(eta))
    self._step, self._time = step, now
    return {'img_per_s': rate}


class _QuietLibraries(logging.logging.Filter):
  """Orbax, TFDS and JAX log every save, read and cache write through absl; keep real warnings."""
  NOISY = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/')
  # 'Type handler ...': runtime/checkpoints.py replaces orbax's on CPU. 'Variant folder ...': TFDS
  # looking into a dataset folder that data/dataset.py is about to build (a first run's).
  EXPECTED = ('Using custom data configuration', 'Not writing persistent cache entry',
              'Type handler registry type', 'Variant folder ')

  def filter(self, record):
    if not any(part in record.pathname for part in self.NOISY):
      return True
    return record.levelno >= logging.logging.WARNING and not str(record.msg).startswith(self.EXPECTED)


def quiet_libraries() -> None:
  """Keep routine absl lines of orbax, TFDS and JAX (saves, reads, cache writes) out of the log."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
