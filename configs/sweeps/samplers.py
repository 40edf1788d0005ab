"""Samplers and step counts (NFE) on ONE trained model: only sample.* changes, so it trains once.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/samplers.py

BASE trains the model of the schedule sweep's baseline (the cpu preset cut to 300 steps, with
the same pins: guidance 2 at every level, the plain v-MSE loss, batch 64, widths 24/48/120), so
the two sweeps read together (drop BASE to sweep the full preset's model). DDPM stops at 250
steps: 1,000 would cost more than the rest of the sweep on 2 CPU cores.
"""
from configs.sweeps import schedules

BASE = schedules.BASE  # the schedule sweep's baseline, pins and all


def get_sweep():
  runs = [{'sample.sampler': 'ddpm', 'sample.steps': n} for n in (50, 100, 250)]
  runs += [{'sample.sampler': s, 'sample.steps': n}
           for s in ('ddim', 'euler', 'dpmpp_2m') for n in (10, 25, 50)]
  # Heun calls the network twice per step (once on the first and last): 5, 13 and 25 steps
  # make 8, 24 and 48 calls, against the others' 10, 25 and 50.
  runs += [{'sample.sampler': 'heun', 'sample.steps': n} for n in (5, 13, 25)]
  runs += [{'sample.sampler': 'dpmpp_2m', 'sample.steps': 25, 'sample.guidance': w}
           for w in (0.0, 2.0, 4.0)]
  return runs
