"""Errors a user can act on (bad input, a busy workdir, divergence): printed as their message
alone, exit code 1 (Ctrl-C outside training: one line, exit code 130). They say what to change,
and a traceback would bury it. Errors raised inside a library (JAX, orbax, TFDS) are not checked
inputs and keep their traceback."""
import contextlib
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OURS = ('experiments', 'diffusion', 'configs')  # not .venv/: a library's error is not ours
_STDLIB = os.path.dirname(os.__file__)


def _in_stdlib(filename: str) -> bool:
  path = os.path.abspath(filename)
  return filename.startswith('<') or (  # '<frozen os>'
      path.startswith(_STDLIB + os.sep) and 'site-packages' not in path
      and 'dist-packages' not in path)


def is_ours(error: BaseException) -> bool:
  """Whether `error` was raised by this project's code (a checked input), not inside a library.
  An OSError raised by the standard library on our behalf (os.makedirs on a path through a
  file) counts as ours: it names the path."""
  frames, tb = [], error.__traceback__
  while tb is not None:
    frames.append(tb.tb_frame.f_code.co_filename)
    tb = tb.tb_next
  if isinstance(error, OSError):
    frames = [f for f in frames if not _in_stdlib(f)]
  if not frames:
    return False
  return os.path.relpath(os.path.abspath(frames[-1]), _ROOT).split(os.sep)[0] in _OURS


@contextlib.contextmanager
def reported():
  """Run the body; an expected error of ours is printed as `Error: <message>`, exit code 1."""
  from experiments.runtime import checkpoints, workdir_lock  # pylint: disable=import-outside-toplevel
  expected = (ValueError, OSError, FloatingPointError, checkpoints.CheckpointError,
              workdir_lock.WorkdirBusy)
  try:
    yield
  except expected as e:
    if not is_ours(e):
      raise
    print(f'Error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except KeyboardInterrupt:
    # Training itself saves and stops on Ctrl-C (runtime/preemption.py). Elsewhere (building the
    # dataset, fine-tuning the refiner, drawing, evaluating) checkpoints, the dataset and the
    # refiner are written whole or not at all; a picture or samples file being written may be
    # cut short, and the same command writes it again.
    print('Stopped by Ctrl-C. Checkpoints are kept; the same command again does what was left.',
          file=sys.stderr, flush=True)
    sys.exit(130)
