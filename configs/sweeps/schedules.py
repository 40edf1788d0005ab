"""Noise schedules, everything else as in the base config (v-prediction is safe for all of them).

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/schedules.py
"""


def get_sweep():
  names = ('linear', 'scaled_linear', 'cosine', 'sigmoid', 'edm', 'shifted_cosine')
  runs = [{'diffusion.schedule': name} for name in names]
  runs.append({'diffusion.schedule': 'linear', 'diffusion.zero_terminal_snr': True})
  return runs
