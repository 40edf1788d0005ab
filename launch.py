"""Train, sample or evaluate a sprite diffusion model.

  python launch.py --config=configs/sprites.py:cpu
  python launch.py --config=configs/sprites.py:smoke --config.train.steps=40
  python launch.py --config=configs/sprites.py:cpu --mode=sample --config.sample.sampler=ddim
  python launch.py --config=configs/sprites.py:cpu --mode=show   # forward process, context pictures
  python launch.py --config=configs/sprites.py:cpu --mode=eval   # quality vs real, memorization audit
  python launch.py --config=configs/sprites.py:tpu --multihost   # on every host of a pod slice

The config file's presets are chosen after the colon; any key can be overridden with
--config.<section>.<key>=VALUE (unknown keys and wrong types fail here, by name).
"""
import os
import sys
import textwrap

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.runtime import hosts, logs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:preset].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder; default runs/<config>[-<preset>].')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'show', 'eval'],
                          'What to do (show: pictures of the forward process and the context).')
hosts.define_flags()  # --multihost [--coordinator_address --num_processes --process_id]


def default_workdir(config) -> str:
  return os.path.join('runs', config.name + (f'-{config.preset}' if config.preset else ''))


def _run_mode(mode: str, config, workdir: str) -> None:
  """Run `mode`; an expected error (bad input, a busy workdir, divergence) is printed as its
  message alone, exit code 1 (runtime/errors.py)."""
  from experiments import evaluate, sample, show, train  # pylint: disable=import-outside-toplevel
  from experiments.data import dataset  # pylint: disable=import-outside-toplevel
  from experiments.runtime import errors  # pylint: disable=import-outside-toplevel
  with errors.reported():
    dataset.check_outputs_outside(config.data, workdir)
    {'train': train.run, 'sample': sample.run, 'show': show.run, 'eval': evaluate.run}[mode](
        config, workdir)


def _config_arg(argv) -> str | None:
  """The value of --config as given (--config=X or --config X), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _refuse(message: str):
  print(f'FATAL Flags parsing error: {message}', file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv):
  """absl's parsing, with a clear message instead of a traceback from inside ml_collections for
  a config file that is not there (run from another folder), an error the config file raises on
  a bad value (an unknown preset), and a --config.* override that names no key (config_flags
  raises AttributeError or KeyError there, not a flags error)."""
  given = _config_arg(argv)
  if given is not None and not os.path.isfile(given.split(':', 1)[0]):
    path = given.split(':', 1)[0]
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'sprites.py')
    here = here if os.path.relpath(here).startswith('..') else os.path.relpath(here)
    _refuse(f'--config={given}: no config file at {os.path.abspath(path)} (a relative path '
            f'starts from the folder you run in). The presets are in {here}: '
            f'--config={here}[:preset].')
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # config_flags puts the config file's own traceback in the text
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ['']
    if 'Error whilst parsing config file' in lines[0] and lines[-1].startswith('ValueError: '):
      _refuse(f'--config={given}: {lines[-1].removeprefix("ValueError: ")}')
    sys.stderr.write(f'FATAL Flags parsing error: {textwrap.indent(str(error), "  ").strip()}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')  # as absl says it
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    name, _, hint = str(e.args[0] if e.args else e).partition('\n')
    name = name.strip('\'"')
    overrides = [a.split('=', 1)[0] for a in argv if a.startswith('--config.')]
    flag = next((a for a in overrides if name in a.split('.')[1:]), None)
    if flag is None:  # not an override's key: an error inside the config file itself
      raise
    _refuse(f'{flag}: the config has no key {name!r}'
            f'{" (" + hint.strip() + ")" if hint.strip() else ""}. Keys are --config.<section>.<key>, '
            'as listed in configs/base.py.')


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  logs.quiet_libraries()
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  hosts.start(config)
  if config.runtime.compile_cache:
    cache = os.path.join(os.path.dirname(os.path.abspath(workdir)), '.jax_cache')
    jax.config.update('jax_compilation_cache_dir', cache)
  logging.info('%s (%s) -> %s on %d %s device(s)', _MODE.value, config.preset or 'default',
               workdir, jax.device_count(), jax.default_backend())
  if config.preset_note:
    logging.info('preset: %s', config.preset_note)
  _run_mode(_MODE.value, config, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=_parse_flags)
