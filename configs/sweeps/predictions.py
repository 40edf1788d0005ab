"""Prediction targets and loss weightings on the base config's schedule.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/predictions.py
"""


def get_sweep():
  runs = [{'diffusion.prediction': p, 'diffusion.loss_weighting': 'simple'}
          for p in ('eps', 'x0', 'v', 'edm')]
  runs += [{'diffusion.prediction': 'v', 'diffusion.loss_weighting': w}
           for w in ('min_snr', 'sigmoid', 'edm')]
  return runs
