"""Test set-up: 8 fake CPU devices (for the sharding tests) and small shared fixtures."""
import os

# Most of the suite's time is XLA compiling many small programs, once each. LLVM at optimisation
# level 0 and XLA:CPU's older loop emitters compile them far faster than the tiny programs then
# run slower: the cold suite took 6m45s against 11m46s without them on the 2-core development
# machine (8m27s with the first alone). Put before the caller's own flags, which win. Both are
# flags of the pinned jaxlib 0.10.2: XLA refuses to start on a flag it does not know, so a
# jaxlib that drops one needs it dropped here.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
os.environ['XLA_FLAGS'] = (FAST_COMPILE + ' ' + os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from configs import sprites  # pylint: disable=wrong-import-position

jax.config.update('jax_compilation_cache_dir',
                  os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '.pytest_cache',
                               'jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the whole session, so each dataset is built once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


def tiny_config(data_dir: str, **overrides):
  """The smoke preset shrunk further: a few steps of an 8-channel model, a 4-step sampler."""
  c = sprites.get_config('smoke')
  c.data.data_dir = data_dir
  c.model.n_feat = 8
  c.train.update(steps=2, batch_size=16, log_every=1, ckpt_every=1)
  c.sample.update(sampler='ddim', steps=4, per_class=1, gif_frames=3, batch_size=64)
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c
