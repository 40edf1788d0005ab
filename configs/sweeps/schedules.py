"""Noise schedules: every one, 3 seeds each, the cpu preset cut to about an hour on 2 CPU cores.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/schedules.py
  python -m experiments.sweep ... --dry_run      # the 24 runs and their workdirs
  python -m experiments.sweep ... --shard=0/3    # a third of it (0/3, 1/3, 2/3), e.g. 3 machines

Everything but the schedule is the cpu preset's (v-prediction: safe for every schedule and for
the zero-terminal-SNR rescale), except BASE: 500 training steps instead of 3,500, and
DPM-Solver++(2M) with 25 steps instead of DDPM-200 for the evaluation's 160 sprites (~8x fewer
network calls). Estimated 50 minutes on 2 idle cores: 24 models x 500 steps at ~5 steps/s
(the cpu preset's pace), ~15 s of sampling and evaluation per run, ~35 s of compilation per
schedule; measured as 14 minutes for 2 schedules x 2 seeds x 100 steps on the shared machine,
where the job got about one core. The shifted and interpolated cosines use Hoogeboom et al.'s
shift for 16x16 sprites, 2 log(64 / 16) = 2.77, as experiments/plots.py draws them. Seeds vary
the training (initial weights, batches, noise); every run samples from the same noise.
"""
import math

SEEDS = 3
BASELINE = 2  # cosine: the cpu preset's schedule
SHIFT = round(2 * math.log(64 / 16), 2)
BASE = {'train.steps': 500, 'train.ckpt_every': 250, 'train.log_every': 50,
        'sample.sampler': 'dpmpp_2m', 'sample.steps': 25, 'sample.per_class': 4}


def get_sweep():
  runs = [{'diffusion.schedule': name}
          for name in ('linear', 'scaled_linear', 'cosine', 'sigmoid', 'edm')]
  runs.append({'diffusion.schedule': 'shifted_cosine', 'diffusion.shift': SHIFT})
  runs.append({'diffusion.schedule': 'interpolated_cosine', 'diffusion.shift': SHIFT})
  runs.append({'diffusion.schedule': 'linear', 'diffusion.zero_terminal_snr': True})
  return runs
