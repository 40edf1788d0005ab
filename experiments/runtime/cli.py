"""The command-line tools' flag parsing: absl's, with one clear line for the mistakes a user makes
with --config (or a --flagfile) instead of a traceback from inside ml_collections."""
import os
import sys
import textwrap

from absl import flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_HELP = ('--help', '--helpshort', '--helpfull', '--helpxml', '-help', '-h', '-?')


def _config_arg(argv) -> str | None:
  """The value of --config as given (--config=X or --config X; the last one wins, as in absl)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      value = arg.split('=', 1)[1]
    elif arg in ('--config', '-config') and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _expanded(argv) -> list[str]:
  """argv with the flags of any --flagfile spliced in, as absl reads them (argv itself when a
  flagfile cannot be read: absl then says which)."""
  try:
    return argv[:1] + flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  except flags.Error:
    return list(argv)


def _refuse(message: str):
  print(f'FATAL Flags parsing error: {message}', file=sys.stderr)
  sys.exit(1)


def define_config(help_text: str, **kwargs):
  """config_flags.DEFINE_config_file('config', ...). It reads every --flagfile on the command line
  as it is defined (at import), so a flagfile that cannot be read is named here in one line, not
  by a traceback from the import."""
  try:
    flags.FLAGS.read_flags_from_files(sys.argv[1:], force_gnu=False)
  except flags.Error as error:
    _refuse(str(error).removeprefix('ERROR:: ').strip())
  return config_flags.DEFINE_config_file('config', None, help_text, **kwargs)


def parse_flags(argv):
  """absl's parsing, with a clear message instead of a traceback from inside ml_collections for
  a config file that is not there (run from another folder), an error the config file raises on
  a bad value (an unknown preset, or a preset where the file has none), and a --config.*
  override that names no key (config_flags raises AttributeError or KeyError there, not a flags
  error); in a --flagfile too."""
  expanded = _expanded(argv)  # flagfiles read once, for both checks below
  given = _config_arg(expanded)
  asks_help = any(arg in _HELP for arg in argv)
  if given is not None and not asks_help and not os.path.isfile(given.split(':', 1)[0]):
    path = given.split(':', 1)[0]
    here = os.path.join(_ROOT, 'configs', 'sprites.py')
    here = here if os.path.relpath(here).startswith('..') else os.path.relpath(here)
    _refuse(f'--config={given}: no config file at {os.path.abspath(path)} (a relative path '
            f'starts from the folder you run in). The presets are in {here}: '
            f'--config={here}[:preset].')
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # config_flags puts the config file's own traceback in the text
    message = str(error).rstrip()
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ['']
    # A bad value (an unknown preset), or a preset passed to a file whose get_config takes none
    if ('Error whilst parsing config file' in lines[0] and
        lines[-1].startswith(('ValueError: ', 'TypeError: '))):
      _refuse(f'--config{"=" + given if given else ""}: {lines[-1].removeprefix("ValueError: ")}')
    message = f'\n{textwrap.indent(message, "  ")}' if '\n' in message else f' {message}'
    sys.stderr.write(f'FATAL Flags parsing error:{message}\n'  # as absl's parse_flags_with_usage
                     'Pass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    name, _, hint = str(e.args[0] if e.args else e).partition('\n')
    name = name.strip('\'"')
    overrides = [a.split('=', 1)[0] for a in expanded if a.startswith('--config.')]
    flag = next((a for a in overrides if name in a.split('.')[1:]), None)
    if flag is None:  # not an override's key: an error inside the config file itself
      raise
    _refuse(f'{flag}: the config has no key {name!r}'
            f'{" (" + hint.strip() + ")" if hint.strip() else ""}. Keys are '
            '--config.<section>.<key>, as listed in configs/base.py.')
