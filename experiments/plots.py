"""Plots of the noise schedules: logSNR(t) and sqrt(alpha_bar(t)) for every schedule.

  python -m experiments.plots --out=docs/schedules.png

Each curve is what the config gives with that schedule and its default parameters
(configs/base.py), plus the zero-terminal-SNR rescale of the course's linear schedule.
"""
import math

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import base
from experiments import from_config

_OUT = flags.DEFINE_string('out', 'docs/schedules.png', 'Where to write the PNG.')
_TIMESTEPS = flags.DEFINE_integer('timesteps', 1000, 'T for the schedules built from betas.')


def curves(timesteps: int) -> dict[str, np.ndarray]:
  """label -> logSNR on a grid of t in [0, 1] (501 points)."""
  t = jnp.linspace(0.0, 1.0, 501)
  variants = [(name, {}) for name in ('linear', 'scaled_linear', 'cosine', 'sigmoid', 'edm')]
  variants += [('shifted_cosine', {'shift': 2 * math.log(64 / 16)}),
               ('interpolated_cosine', {'shift': 2 * math.log(64 / 16), 'shift_t0': 0.0}),
               ('linear', {'zero_terminal_snr': True})]
  out = {}
  for name, extra in variants:
    d = base.get_config().diffusion
    d.update(schedule=name, timesteps=timesteps, **extra)
    label = name + ''.join(f' {k}={v:.3g}' if isinstance(v, float) else f' {k}'
                           for k, v in extra.items())
    out[label] = np.asarray(from_config.logsnr_fn(d)(t), np.float64)
  return out


def plot(path: str, timesteps: int) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  t = np.linspace(0.0, 1.0, 501)
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  for label, logsnr in curves(timesteps).items():
    style = '--' if 'zero_terminal' in label else '-'
    left.plot(t, np.clip(logsnr, -25, 25), style, label=label)
    right.plot(t, np.sqrt(1 / (1 + np.exp(-logsnr))), style, label=label)
  left.set(xlabel='t', ylabel='logSNR(t) (clipped to +-25)', title='log signal-to-noise ratio')
  right.set(xlabel='t', ylabel='sqrt(alpha_bar(t)) = alpha(t)', title='signal scale')
  left.grid(alpha=0.3)
  right.grid(alpha=0.3)
  right.legend(fontsize=8)
  fig.suptitle(f'Noise schedules (T = {timesteps} for the beta-table schedules)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  del argv
  plot(_OUT.value, _TIMESTEPS.value)


if __name__ == '__main__':
  app.run(main)
