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

from absl import app, flags, logging

from experiments.runtime import cli, hosts, logs

_CONFIG = cli.define_config('Config file[:preset].', lock_config=True)
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


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  logs.quiet_libraries()
  config = _CONFIG.value
  workdir = os.path.expanduser(_WORKDIR.value) if _WORKDIR.value else default_workdir(config)
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
  app.run(main, flags_parser=cli.parse_flags)
