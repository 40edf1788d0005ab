"""One training run per workdir: <workdir>/train.lock names its holder (pid, host, command).

The lock is an flock on that file, which the kernel releases when its holder dies, even by SIGKILL:
a lock file left behind by a dead run is taken over (with a warning naming it), and a live holder
is named in the error. On filesystems without flock, a lock whose pid no longer runs on this host
is taken over, and any other is refused. Only process 0 of a multi-host run takes it.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

from experiments.runtime import files

NAME = 'train.lock'


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir."""


def _me() -> dict:
  return {'pid': os.getpid(), 'host': socket.gethostname(), 'command': ' '.join(sys.argv),
          'started': time.strftime('%Y-%m-%d %H:%M:%S')}


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    return json.loads(os.read(fd, 65536).decode('utf-8') or '{}')
  except (ValueError, UnicodeDecodeError):
    return {}


def _write(fd: int, info: dict) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(info).encode('utf-8'))
  os.fsync(fd)


def _alive_here(holder: dict) -> bool:
  """Whether `holder` may still run: its pid lives on this host, or it is on another host."""
  if holder.get('host') != socket.gethostname():
    return bool(holder)
  pid = holder.get('pid')
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, under another user
    return True
  return True


def _busy(path: str, holder: dict) -> WorkdirBusy:
  who = (f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")}, started '
         f'{holder.get("started", "?")}: {holder.get("command", "?")}')
  return WorkdirBusy(
      f'{os.path.dirname(path)} is in use by another training run ({who}). Wait for it to end, '
      f'stop it, or pass another --workdir. If that run is gone (its machine died), delete {path}.')


def _lock(fd: int) -> bool:
  """True if this process now holds the flock; False without flock support (checked by pid)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise
  except OSError as e:
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
      return False
    raise
  return True


def acquire(workdir: str) -> int:
  """Take <workdir>/train.lock; returns its open file descriptor. Raises WorkdirBusy."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir} is a file; pass a folder (it is created).')
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, NAME)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      flocked = _lock(fd)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      raise _busy(path, holder) from None
    holder = _read(fd)
    if not flocked and holder and _alive_here(holder) and holder.get('pid') != os.getpid():
      os.close(fd)
      raise _busy(path, holder)
    with contextlib.suppress(FileNotFoundError):
      if os.fstat(fd).st_ino == os.stat(path).st_ino:  # else its holder removed it as we opened it
        break
    os.close(fd)
  if holder:
    logging.warning('Took over %s, left by pid %s on host %s, which is no longer running.',
                    path, holder.get('pid', '?'), holder.get('host', '?'))
  _write(fd, _me())
  return fd


def release(workdir: str, fd: int) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(workdir, NAME))
  os.close(fd)


@contextlib.contextmanager
def hold(workdir: str):
  """Hold the workdir's lock for the block (process 0 only); removed on the way out, and with it
  the workdir, if this run made it and a check refused the run before anything was written."""
  if not files.is_writer():
    yield
    return
  made = not os.path.exists(workdir)
  fd = acquire(workdir)
  try:
    yield
  finally:
    release(workdir, fd)
    if made:
      with contextlib.suppress(OSError):  # not empty: the run wrote something, which stays
        os.rmdir(workdir)
