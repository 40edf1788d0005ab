"""Sprite diffusion presets. Pick one after the colon:

  python launch.py --config=configs/sprites.py:smoke   # < 1 min on a 2-core CPU: tests use it
  python launch.py --config=configs/sprites.py:cpu     # the README's main job: ~15 min, 2 CPU cores
  python launch.py --config=configs/sprites.py:course  # the course's recipe, exactly
  python launch.py --config=configs/sprites.py         # the main job: `cpu` on a CPU, else `accelerator`
  python launch.py --config=configs/sprites.py:accelerator  # the best recipe for one GPU or TPU
  python launch.py --config=configs/sprites.py:tpu --multihost --workdir=/mnt/runs/sprites-tpu
                                                       # every worker of a TPU pod slice at once
                                                       # (README, Multi-host: the gcloud commands)
"""
import glob
import importlib.util
import os

from configs import base
from diffusion import registry

PRESETS = ('smoke', 'cpu', 'course', 'default', 'accelerator', 'tpu')


def accelerator() -> str:
  """'gpu' or 'tpu' if JAX could use one here, else 'cpu', decided without starting JAX: the
  launcher must still set the CPU device count and start multi-host before the backend starts.

  JAX_PLATFORMS wins; otherwise a GPU needs JAX's CUDA plugin and an NVIDIA device node, a TPU
  libtpu and an accelerator device node.
  """
  platforms = os.environ.get('JAX_PLATFORMS', '').split(',')[0].strip().lower()
  if platforms:
    return {'cuda': 'gpu', 'rocm': 'gpu', 'gpu': 'gpu', 'tpu': 'tpu'}.get(platforms, 'cpu')
  found = lambda *names: any(importlib.util.find_spec(n) for n in names)
  if found('libtpu') and (glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')):
    return 'tpu'
  if found('jax_cuda12_plugin', 'jax_cuda13_plugin') and glob.glob('/dev/nvidia[0-9]*'):
    return 'gpu'
  return 'cpu'


def _smoke(c):
  c.model.n_feat = 16
  c.train.update(steps=30, batch_size=32, learning_rate=2e-3, log_every=10, ckpt_every=30)
  c.sample.update(sampler='ddim', steps=10, per_class=2, gif_frames=5)
  c.eval.at_end = False  # keeps smoke runs and the tests fast; --mode=eval still works


def _cpu(c):
  """The best recipe for about 15 minutes of 2 CPU cores: a small UNet (attention only at 4x4,
  one block per level: XLA:CPU pays for every convolution), v-prediction on the cosine schedule
  with min-SNR-5 weighting, and a deterministic 25-step sampler so most of the budget goes to
  training."""
  # Widths 16/32/80 (1.0M parameters): twice the sprites per second of 24/48/120, and in this
  # budget sprites seen count for more than width: over two seeds 6% less grain and FID as close
  # to real or closer, in less time (docs/ablations.md).
  c.model.update(name='unet', n_feat=16, channel_mult=(1, 2, 5), blocks=1, attention=(2,),
                 dropout=0.0)
  # min-SNR (Hang et al. 2023): over two seeds each, flatter fills and fewer speckles to the eye
  # than plain v-MSE, with FID and recall within the seed spread (docs/ablations.md).
  c.diffusion.update(schedule='cosine', timesteps=1000, prediction='v', loss_weighting='min_snr',
                     min_snr_gamma=5.0)
  # Batch 32, not 64: XLA:CPU's speed per sprite barely depends on the batch, so twice the updates
  # for the same sprites; over two seeds as close to real on FID, recall a little higher, fills a
  # little flatter to the eye (docs/ablations.md). 8,400 steps: 9-11 minutes of 2 cores.
  # At most 250 passes over the training split: binds only below 1,074 sprites (the emoji get 185).
  # 736 passes over 174 emoji drew them back almost pixel for pixel; 250 left no near copies,
  # but samples still lean towards the training sprites (README, Presets).
  c.train.update(steps=8_400, max_epochs=250.0, batch_size=32, learning_rate=2e-3,
                 warmup_steps=100, lr_schedule='cosine', ema_halflife_kimg=20.0, log_every=100,
                 ckpt_every=400)
  # Drawing, each part measured on the same models and noise (README, "What the cpu recipe's
  # choices bought"; docs/ablations.md): autoguidance 0.5 from the run's own weights at step 400
  # (Karras et al. 2024; later guides left more grain), classifier-free guidance only at logSNR
  # -2..3 (Kynkaanniemi et al. 2024), and a refining pass (samplers.refine): the drawn sprites
  # noised again to logSNR 4 eight times, denoised and averaged, so speckle that follows the noise
  # averages away (grain 6-10% lower on all seven Results models). The first step starts at
  # logSNR -8, not t = 1, since min-SNR never trains the network near -20; with guidance 2 there,
  # FID fell on all seven models.
  c.sample.update(sampler='dpmpp_2m', steps=25, logsnr_start=-8.0, guidance=2.0,
                  guidance_logsnr='-2,3', autoguidance=0.5, guide_step=400, per_class=12,
                  refine_draws=8, refine_logsnr=4.0)
  # The pass by a refiner (runtime/refiner.py): a copy of the final weights fine-tuned 250 steps
  # at logSNR 3..5 only (about 35 s), with l1_tv, the median plus a price on speckle: grain 5-8%
  # lower again on all seven, recall higher (docs/ablations.md, "The refiner").
  c.train.refiner_steps = 250
  c.eval.num_samples = 320  # DPM-Solver++ 25 draws twice DDPM-200's 160 in a quarter of the calls


def _course(c):
  """"How Diffusion Models Work": ContextUnet(n_feat=64), linear betas 1e-4..0.02, T=500,
  Adam 1e-3 decayed linearly to 0, batch 100, 32 epochs of 89,400 sprites = 28,600 steps,
  context dropped for 10% of examples, DDPM sampling with 500 steps."""
  c.model.n_feat = 64
  c.diffusion.update(schedule='linear', timesteps=500, beta_start=1e-4, beta_end=0.02,
                     prediction='eps', loss_weighting='simple', cond_drop_rate=0.1)
  c.train.update(steps=28_600, batch_size=100, learning_rate=1e-3, lr_schedule='linear',
                 warmup_steps=0, log_every=200, ckpt_every=2_000)
  c.sample.update(sampler='ddpm', steps=500, guidance=0.0, clip_x0='none')


def _accelerator(c):
  """The best recipe we have for one GPU or TPU, run to its end on DawnLike on one H200: the CPU
  preset's design at GPU width, with the loss weighting and guidance the CPU ablations chose
  (docs/ablations.md), 300 passes and a 50-step sampler (below; docs/results.md)."""
  c.model.update(name='unet', n_feat=128, channel_mult=(1, 2, 2), blocks=2, attention=(1, 2),
                 dropout=0.1, dtype='bfloat16')
  c.diffusion.update(schedule='cosine', timesteps=1000, prediction='v', loss_weighting='min_snr',
                     min_snr_gamma=5.0)
  # At most 300 passes over the training split, whatever its size: a small set is memorized
  # after a fixed number of passes (from_config.capped_steps). On one H200, on DawnLike's 1,878
  # sprites, this network drew training sprites back after 800 passes (2,940 steps: 17% near
  # copies with 50 sampler steps). After 400 (1,470 steps; two runs, scored on the CPU) 0-0.2%
  # near copies, FID 1.07x / 1.01x the floor, but by pixels 10-12% of samples nearer a training
  # sprite than 95% of held-out ones (new sprites: 5%), characters among them redrawn almost
  # pixel for pixel; after 300 (1,110 steps) FID 1.16x, 3.0% nearer by pixels (by features 11%
  # against 21-22%), as crisp (grain 0.148 against 0.145). On emoji the same trade, by pixels:
  # 400 passes 1.22x and 11% nearer, 250 passes 1.33x and 1% (docs/results.md).
  # 2,000 sprites stop at step 1,180; the course's 89,400 train all 50,000 steps (286 passes).
  # An evaluation, memorization audit included, every 10,000 steps shows a long run's trend,
  # and those checkpoints are kept for good.
  c.train.update(steps=50_000, max_epochs=300.0, batch_size=512, learning_rate=1e-3,
                 warmup_steps=500, lr_schedule='cosine', log_every=500, ckpt_every=5_000,
                 eval_every=10_000, keep_every=10_000)
  # 50 steps, not the CPU preset's 25: this better-trained network's sprites come closer to real
  # with a finer solver (H200, FID over the floor: 800 passes 1.27 / 1.16 / 1.03 at 20 / 25 / 50
  # steps; 400 passes, scored on the CPU, 1.32 / 1.07 and 1.23 / 1.01 at 20 / 50 in two runs).
  # Twenty steps uniform in logSNR (sample.logsnr_grid='-10,10') drew as close on the second
  # (0.97) but grainier (0.152 against 0.145), so the preset keeps 50 uniform in t; drawing
  # 1,000 took 13-25 s either way on the H200.
  c.sample.update(sampler='dpmpp_2m', steps=50, guidance=2.0, guidance_logsnr='-2,3',
                  per_class=16)


def _tpu(c):
  """The accelerator recipe on a pod slice (v4-32, v5litepod-16, ...): twice the batch for half
  the steps (the same images seen). 1,024 splits over any power-of-two chip count up to 1,024.
  Not tuned, and not yet run on a real pod."""
  _accelerator(c)
  c.train.update(steps=25_000, batch_size=1_024, log_every=250, ckpt_every=2_500)
  c.sample.batch_size = 1_024


def _auto(c):
  """No preset named: the accelerator recipe where JAX has a GPU or TPU, else the CPU one."""
  found = accelerator()
  chosen = 'cpu' if found == 'cpu' else 'accelerator'
  PRESET_FNS[chosen](c)
  c.preset = chosen
  # 15 minutes holds for 16 px: a step on 32 px sprites takes 3.5 times as long (XLA:CPU).
  timing = (' (about 15 minutes on 2 CPU cores for 16 px sprites; the ETA in the step lines '
            'says how long for these)') if chosen == 'cpu' else ''
  c.preset_note = (f'no preset named: found {found.upper() if found != "cpu" else "no GPU or TPU"}, '
                   f'so the {chosen} recipe{timing}')


PRESET_FNS = {'smoke': _smoke, 'cpu': _cpu, 'course': _course, 'accelerator': _accelerator,
              'tpu': _tpu}


def get_config(preset: str = ''):
  preset = preset or 'default'
  registry.check(preset, PRESETS, 'preset')
  c = base.get_config()
  c.name, c.preset = 'sprites', preset
  {**PRESET_FNS, 'default': _auto}[preset](c)
  return c
