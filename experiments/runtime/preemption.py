"""Stopping cleanly on SIGTERM / SIGINT: finish the dispatch in flight, save, exit 0.

TPU pods, SLURM and Kubernetes send SIGTERM some seconds before they kill a job, and Ctrl-C sends
SIGINT. The handler only records the signal; the training loop asks `requested()` after each
dispatch and saves a checkpoint at the step it reached before it stops. A second signal gets the
previous handler again (a second Ctrl-C ends the run at once), so a stuck save can still be
interrupted.

With several processes the stop must happen at the same step everywhere (the save is collective):
there JAX's preemption sync point decides (jax.distributed installs its own SIGTERM notifier), and
no Python handler is installed. The sync point is the largest count any process has reported
plus one, reached when a process reports exactly that count: so the count is of calls (one per
dispatch, the same sequence in every process), not the training step, which grows by
steps_per_dispatch (10 on accelerators) and would step over it.
"""
import itertools
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# One count for the process: the sync manager keeps the largest count seen, so the count must not
# start again for the next training group of a sweep.
_sync_calls = itertools.count(1)


class StopOnSignal:
  """Context manager; `requested()` turns True once SIGTERM or SIGINT arrived."""

  def __init__(self):
    self.received: str | None = None
    self._previous = {}
    self._sync_point_works = True

  def __enter__(self):
    # Python delivers signals to the main thread only; elsewhere (a notebook thread) do nothing.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc_info):
    self._restore_handlers()
    return False

  def _restore_handlers(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signal.Signals(signum).name
    self._restore_handlers()
    logging.warning('%s received: finishing the current dispatch and saving a checkpoint before '
                    'stopping (send it again to stop at once, without saving).', self.received)

  def requested(self) -> bool:
    """True once a stop was asked; with several processes, the same answer in every process.
    Call it once per dispatch, in every process."""
    if jax.process_count() == 1 or not self._sync_point_works:
      return self.received is not None
    try:
      if multihost_utils.reached_preemption_sync_point(next(_sync_calls)):
        self.received = 'SIGTERM (preemption notice)'
    except RuntimeError as e:  # jax.distributed was not initialized with a preemption service
      self._sync_point_works = False
      logging.warning('No preemption sync point (%s): a SIGTERM will not save first.', e)
    return self.received is not None
