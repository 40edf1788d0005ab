"""Samplers and step counts (NFE) on ONE trained model: only sample.* changes, so it trains once.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/samplers.py
"""


def get_sweep():
  runs = [{'sample.sampler': 'ddpm', 'sample.steps': n} for n in (50, 200, 1000)]
  runs += [{'sample.sampler': s, 'sample.steps': n}
           for s in ('ddim', 'euler', 'dpmpp_2m') for n in (10, 25, 50)]
  runs += [{'sample.sampler': 'heun', 'sample.steps': n} for n in (10, 25)]
  runs += [{'sample.sampler': 'dpmpp_2m', 'sample.steps': 25, 'sample.guidance': w}
           for w in (0.0, 2.0, 4.0)]
  return runs
