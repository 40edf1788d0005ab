"""Noise schedules: every one, 3 seeds each, the cpu preset cut to under an hour on 2 CPU cores.

  python -m experiments.sweep --config=configs/sprites.py:cpu --sweep=configs/sweeps/schedules.py
  python -m experiments.sweep ... --dry_run      # the 24 runs and their workdirs
  python -m experiments.sweep ... --shard=0/3    # a third of it (0/3, 1/3, 2/3), e.g. 3 machines

Everything but the schedule is the cpu preset's (v-prediction: safe for every schedule and for the
zero-terminal-SNR rescale), except BASE: 300 training steps of 64 instead of 8,400 of 32 (the same
warmup, a cosine decay over the 300), 160 sprites per evaluation instead of 320, and what the
preset was when the sweep ran, pinned so the README's numbers stay reproducible: guidance 2 at
every noise level (it now guides at logSNR -2..3 only), the plain v-MSE loss (`simple`; it now uses
min-SNR), batch 64 (now 32), widths 24/48/120 (now 16/32/80) and no refining pass (now 8 draws at
logSNR 4, by a refiner fine-tuned 250 steps), the sampler's first step from t = 1 (now from
logSNR -8). Every run draws with DPM-Solver++(2M), 25 steps. Estimated at 2.5 minutes per run on 2
idle cores (300 steps at ~190 sprites/s, ~45 s of compilation, ~20 s of sampling and evaluation);
the runs that had the machine alone took 2.8 in the first run and 2.0 in a rerun on an idle machine
(48 minutes for the 24). The shifted and interpolated cosines use Hoogeboom et al.'s shift for
16x16 sprites, 2 log(64 / 16) = 2.77, as experiments/plots.py draws them. Seeds vary the training
(initial weights, batches, noise); every run samples from the same noise.
"""
import math

SEEDS = 3
BASELINE = 2  # cosine: the cpu preset's schedule
SHIFT = round(2 * math.log(64 / 16), 2)
BASE = {'train.steps': 300, 'train.ckpt_every': 300, 'train.log_every': 50,
        'sample.per_class': 4, 'sample.guidance': 2.0, 'eval.num_samples': 160,
        'diffusion.loss_weighting': 'simple', 'train.batch_size': 64,
        'sample.guidance_logsnr': '', 'model.n_feat': 24, 'sample.autoguidance': 0.0,
        'sample.guide_step': 0, 'sample.refine_draws': 0, 'train.refiner_steps': 0,
        'sample.logsnr_start': 0.0}


def get_sweep():
  runs = [{'diffusion.schedule': name}
          for name in ('linear', 'scaled_linear', 'cosine', 'sigmoid', 'edm')]
  runs.append({'diffusion.schedule': 'shifted_cosine', 'diffusion.shift': SHIFT})
  runs.append({'diffusion.schedule': 'interpolated_cosine', 'diffusion.shift': SHIFT})
  runs.append({'diffusion.schedule': 'linear', 'diffusion.zero_terminal_snr': True})
  return runs
