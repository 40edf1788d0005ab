"""The config schema: every key, its default, and what it means.

Presets in `configs/sprites.py` start from `get_config()` and change values;
they never add keys. The launcher locks the config, so a typo in an override
(`--config.trian.steps=5`) or a wrong type fails at flag parsing.
"""
import ml_collections


def _data() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.source = 'emoji'     # emoji | course | dawnlike | folder
  s.manual_dir = ''      # source folder (course, dawnlike, folder), or a sheet file (folder)
  s.data_dir = '~/tensorflow_datasets'  # where prepared TFDS datasets live
  s.image_size = 16      # sprites are image_size x image_size RGB
  s.tile_size = 0        # folder: slice every image into tiles of this size (a sprite sheet); 0 = off
  s.test_fraction = 0.1  # share of sprite groups held out as the `test` split
  return s


def _model() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.name = 'context_unet'  # context_unet (the course's) | unet (ADM-style, attention, logSNR input)
                           # | unet_mp (the UNet with EDM2's magnitude-preserving layers)
  s.n_feat = 64            # base channel width (unet: of its first level)
  s.channel_mult = (1, 2, 2)  # unet: width of each level (16, 8, 4 px at 16 px) as multiples of n_feat
  s.blocks = 2             # unet: residual blocks per level on the way down (one more on the way up)
  s.attention = (1, 2)     # unet: levels with self-attention (0 = full resolution)
  s.head_dim = 32          # unet: channels per attention head
  s.dropout = 0.0          # unet: dropout in the residual blocks while training
  s.self_cond = False      # unet: also feed it its own earlier x0_hat (self-conditioning)
  s.patch = 1              # unet: p > 1 works on p x p pixel patches (first level at image_size/p)
  s.dtype = 'float32'      # compute dtype: float32 | bfloat16 (parameters stay float32)
  return s


def _diffusion() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.schedule = 'linear'   # see diffusion.schedules.SCHEDULES
  s.timesteps = 500       # T: training draws t from {1..T}/T; samplers may use any step count
  s.beta_start = 1e-4     # linear / scaled_linear
  s.beta_end = 0.02       # linear / scaled_linear
  s.cosine_s = 0.008      # cosine offset (Nichol & Dhariwal)
  s.sigmoid_start = -3.0  # sigmoid schedule (Chen 2023)
  s.sigmoid_end = 3.0
  s.sigmoid_tau = 1.0
  s.sigma_min = 0.002     # edm (Karras et al. 2022)
  s.sigma_max = 80.0
  s.rho = 7.0
  s.shift = 0.0           # shifted_cosine / interpolated_cosine: logSNR shift (at t=1 for interpolated)
  s.shift_t0 = 0.0        # interpolated_cosine: logSNR shift at t=0 (blends linearly to shift at t=1)
  s.zero_terminal_snr = False  # rescale so that SNR(t=1) = 0 (Lin et al. 2024)
  s.prediction = 'eps'    # eps | x0 | v | edm (EDM preconditioning)
  s.sigma_data = 0.5      # edm preconditioning and weighting
  s.loss_weighting = 'simple'  # see diffusion.losses.WEIGHTINGS
  s.loss_norm = 'l2'      # l2: squared error (the posterior mean) | l1: absolute error (its median)
                          # | l1_tv: l1 plus the error's total variation (the refiner's)
  s.min_snr_gamma = 5.0   # min_snr weighting
  s.sigmoid_bias = 2.0    # sigmoid weighting (Kingma & Gao 2023)
  s.cond_drop_rate = 0.1  # share of examples trained with the null context
  s.importance = 0.0      # share of training noise levels drawn in proportion to the loss weight
                          # (the loss corrected to stay the same in expectation); 0 = uniform t
  return s


def _train() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.steps = 10_000
  s.max_epochs = 0.0          # > 0: stop after this many passes over the train split if that
                              # comes first (a small set is memorized after a fixed number of
                              # passes, not steps); train.steps is then set from the data
  s.batch_size = 100          # global batch, split over all devices
  s.learning_rate = 1e-3
  s.lr_schedule = 'linear'    # constant | linear (to 0, as the course) | cosine
  s.warmup_steps = 0
  s.weight_decay = 0.0        # AdamW when > 0
  s.adam_beta2 = 0.999        # Adam's second-moment decay (EDM2 uses 0.99: adapts faster)
  s.grad_clip = 0.0           # global-norm clip when > 0
  s.hflip = False             # also train on mirror images (off: a side-facing sprite's
                              # mirror can mean another thing; the copy audit checks mirrors)
  s.ema_halflife_kimg = 50.0  # EMA half-life in thousands of images (independent of batch size)
  s.ema_rampup = 0.05         # half-life <= this share of images seen so far (EDM)
  s.steps_per_dispatch = 0    # train steps fused in one jitted call (lax.scan); 0 = auto:
                              # up to 10 on GPU/TPU (~2x at batch 100 on an H100), 1 on CPU
  s.log_every = 100
  s.ckpt_every = 1_000
  s.keep_checkpoints = 2      # the latest K checkpoints are kept (>= 1) ...
  s.keep_every = 0            # ... and for good every one at a multiple of this step; 0 = none
  s.sample_every = 0          # write a sample grid every N steps; 0 = only at the end
  s.eval_every = 0            # run the evaluation every N steps; 0 = only with --mode=eval / at the end
  s.refiner_steps = 0         # > 0: after the last step, fine-tune a copy of the drawing weights
                              # this many steps into the refining pass's network (its own
                              # checkpoint, <workdir>/refiner/; runtime/refiner.py); 0 = none
  s.refiner_logsnr = '3,5'    # ... on these nearly clean levels only ('lo,hi', uniform in t) ...
  s.refiner_norm = 'l1_tv'    # ... with this norm (l1: the median of the clean sprites; l1_tv
                              # with the error's total variation: flat fills stay flat) ...
  s.refiner_learning_rate = 5e-4  # ... by Adam: 50 steps of warm-up, then a cosine decay
  return s


def _sample() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.sampler = 'ddpm'     # see diffusion.samplers.SAMPLERS
  s.steps = 500          # number of denoising steps (independent of diffusion.timesteps)
  s.eta = 0.0            # ddim: 0 = deterministic, 1 = as ancestral
  s.logsnr_end = 0.0     # > 0: the last step jumps to x0_hat from this logSNR, the others spread
                         # over the levels above it; 0 = step down to t = 0 evenly in t
  s.logsnr_grid = ''     # 'lo,hi': the steps' inner points uniform in logSNR from lo to hi (close
                         # to DPM-Solver's 'logSNR' spacing), e.g. '-8,8'; '' = uniform in t
  s.logsnr_start = 0.0   # < 0: the pure noise taken as x at this logSNR, the steps spread from there
                         # (EDM's sigma_max: 80 is -8.8); 0, or a level at or below the schedule's
                         # own at t = 1: from t = 1
  s.guidance = 0.0       # classifier-free guidance w: (1 + w) cond - w uncond; 0 = off
  s.guidance_logsnr = ''  # 'lo,hi': guide only where lo <= logSNR <= hi, e.g. '-2,3'; '' = all
  s.autoguidance = 0.0   # a: (1 + a) D - a D_guide, D_guide the same run's weights at guide_step; 0 = off
  s.guide_step = 0       # the step whose (EMA) weights guide; training keeps that checkpoint for good
  s.refine_draws = 0     # > 0: the drawn sprites noised again to refine_logsnr this many times,
                         # denoised, and averaged (speckle that follows the noise averages away)
  s.refine_logsnr = 4.0  # the nearly clean level of that last pass
  s.refiner = True       # that pass denoises with the run's refiner where it has one for the
                         # weights drawn (train.refiner_steps); False: with the drawing weights
  s.clip_x0 = 'clip'     # none | clip | dynamic: how the predicted x0 is kept in [-1, 1]
  s.dynamic_percentile = 0.995
  s.per_class = 8        # sprites per class in the grid (one row per class)
  s.mix = ''             # extra context mixes, e.g. 'food_drink:0.6,objects:0.4;0:0.5,1:0.5' (emoji)
  s.palette = 0          # > 0: snap every drawn pixel to the training set's colors (k-means to this
                         # many if it has more); eval then scores the snapped sprites. 0 = off
  s.use_ema = True
  s.seed = 0             # sprite i's noise derives from (seed, i): the same at any batch size
  s.batch_size = 256     # sprites per jitted sampling call (the last: only those left)
  s.gif = True           # write the denoising progression as a GIF
  s.gif_frames = 25
  s.upscale = 4          # nearest-neighbor factor for the PNG grids
  s.sheet = True         # also write a game-ready sprite sheet: <stem>_sheet.png (RGBA) + .json atlas
  s.sheet_colors = 0     # reduce the sheet to this many colors (k-means, one palette); 0 = keep all
  s.sheet_upscale = 1    # integer nearest-neighbor factor of the sheet (engines usually scale it)
  s.sheet_key = 24       # background: border-connected, channels >= 255 - this (> 30 eats pale sprites)
  return s


def _show() -> ml_collections.ConfigDict:
  """Pictures that explain the model (--mode=show)."""
  s = ml_collections.ConfigDict()
  s.sprites = 4            # training sprites in the forward-process strip (one per class)
  s.forward_frames = 40    # frames of the forward-process GIF
  s.class_a = ''           # interpolation grid from this class (name or index; '' = the first) ...
  s.class_b = ''           # ... to this one ('' = the second)
  s.mix_rows = 4           # starting noises in the interpolation grid, one per row
  s.mix_steps = 7          # mixing weights 0 -> 1, one per column
  s.guidance_scales = '0,0.5,1,2,4'  # the guidance strip's columns (classifier-free guidance w)
  return s


def _runtime() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.compile_cache = True  # JAX persistent compilation cache in <workdir>/../.jax_cache
  s.cpu_devices = 0       # on CPU, XLA devices the batch is split over; 0 = one per core
  return s


def _eval() -> ml_collections.ConfigDict:
  """Quality and memorization: --mode=eval, the end of training, every train.eval_every."""
  s = ml_collections.ConfigDict()
  s.at_end = True          # evaluate when training ends (the smoke preset turns it off)
  s.num_samples = 1_000    # sprites drawn per evaluation, classes as in the train split
  s.samples = ''           # evaluate this samples .npz (from --mode=sample) instead of drawing
  s.reference = 'test'     # split the samples are compared with: test (held out) | train
  s.near_copy = 2.0        # near copy: mean |pixel diff| (0-255) to a training sprite <= this
  s.knn = 3                # k of the k-NN manifolds for precision / recall (Kynkaanniemi 2019)
  s.repeats = 10           # metrics averaged over this many redrawn halves of the reference
  s.seed = 0               # the halves of the reference and the order of the samples
  s.batch_size = 1024      # rows per block of the feature network and of pairwise distances
  s.feature_version = 2    # feature network version (3: GroupNorm, 4: EMA, 5: gray; in its cache key)
  s.feature_steps = 3_000  # training steps of the sprite feature network (in its cache key)
  s.feature_seed = 0       # its seed (in its cache key)
  s.feature_width = 32     # its first layer's channels (in its cache key)
  s.nearest_shown = 24     # closest samples drawn in nearest.png
  return s


def get_config() -> ml_collections.ConfigDict:
  """Every key with its default; one section per function above."""
  c = ml_collections.ConfigDict()
  c.name = 'sprites'    # config family; the default workdir is runs/<name>[-<preset>]
  c.preset = ''         # set by the preset; part of the default workdir name
  c.preset_note = ''    # why this preset ran, when it was chosen automatically (logged at start)
  c.seed = 0            # every key of the run derives from it: fold_in(seed, step), fold_in(seed, index)
  c.data = _data()
  c.model = _model()
  c.diffusion = _diffusion()
  c.train = _train()
  c.sample = _sample()
  c.show = _show()
  c.runtime = _runtime()
  c.eval = _eval()
  return c
