"""The config schema: every key, its default, and what it means.

Presets in `configs/sprites.py` start from `get_config()` and change values;
they never add keys. The launcher locks the config, so a typo in an override
(`--config.trian.steps=5`) or a wrong type fails at flag parsing.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'sprites'    # config family; the default workdir is runs/<name>[-<preset>]
  c.preset = ''         # set by the preset; part of the default workdir name
  c.seed = 0            # every key of the run derives from it: fold_in(seed, step), fold_in(seed, index)

  c.data = ml_collections.ConfigDict()
  c.data.source = 'emoji'     # emoji | course | dawnlike | folder
  c.data.manual_dir = ''      # source folder (course, dawnlike, folder), or a sheet file (folder)
  c.data.data_dir = '~/tensorflow_datasets'  # where prepared TFDS datasets live
  c.data.image_size = 16      # sprites are image_size x image_size RGB
  c.data.tile_size = 0        # folder: slice every image into tiles of this size (a sprite sheet); 0 = off
  c.data.test_fraction = 0.1  # share of sprite groups held out as the `test` split

  c.model = ml_collections.ConfigDict()
  c.model.name = 'context_unet'  # context_unet (the course's) | unet (modern, attention)
  c.model.n_feat = 64            # base channel width
  c.model.dtype = 'float32'      # compute dtype: float32 | bfloat16 (parameters stay float32)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = 'linear'   # see diffusion.schedules.SCHEDULES
  c.diffusion.timesteps = 500       # T: training draws t from {1..T}/T; samplers may use any step count
  c.diffusion.beta_start = 1e-4     # linear / scaled_linear
  c.diffusion.beta_end = 0.02       # linear / scaled_linear
  c.diffusion.cosine_s = 0.008      # cosine offset (Nichol & Dhariwal)
  c.diffusion.sigmoid_start = -3.0  # sigmoid schedule (Chen 2023)
  c.diffusion.sigmoid_end = 3.0
  c.diffusion.sigmoid_tau = 1.0
  c.diffusion.sigma_min = 0.002     # edm (Karras et al. 2022)
  c.diffusion.sigma_max = 80.0
  c.diffusion.rho = 7.0
  c.diffusion.shift = 0.0           # shifted_cosine / interpolated_cosine: logSNR shift (at t=1 for interpolated)
  c.diffusion.shift_t0 = 0.0        # interpolated_cosine: logSNR shift at t=0 (blends linearly to shift at t=1)
  c.diffusion.zero_terminal_snr = False  # rescale so that SNR(t=1) = 0 (Lin et al. 2024)
  c.diffusion.prediction = 'eps'    # eps | x0 | v | edm (EDM preconditioning)
  c.diffusion.sigma_data = 0.5      # edm preconditioning and weighting
  c.diffusion.loss_weighting = 'simple'  # see diffusion.losses.WEIGHTINGS
  c.diffusion.min_snr_gamma = 5.0   # min_snr weighting
  c.diffusion.sigmoid_bias = 2.0    # sigmoid weighting (Kingma & Gao 2023)
  c.diffusion.cond_drop_rate = 0.1  # share of examples trained with the null context

  c.train = ml_collections.ConfigDict()
  c.train.steps = 10_000
  c.train.batch_size = 100          # global batch, split over all devices
  c.train.learning_rate = 1e-3
  c.train.lr_schedule = 'linear'    # constant | linear (to 0, as the course) | cosine
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.0        # AdamW when > 0
  c.train.grad_clip = 0.0           # global-norm clip when > 0
  c.train.ema_halflife_kimg = 50.0  # EMA half-life in thousands of images (independent of batch size)
  c.train.ema_rampup = 0.05         # half-life <= this share of images seen so far (EDM)
  c.train.steps_per_dispatch = 0    # train steps fused in one jitted call (lax.scan); 0 = auto:
                                    # up to 10 on GPU/TPU (~2x at batch 100 on an H100), 1 on CPU
  c.train.log_every = 100
  c.train.ckpt_every = 1_000
  c.train.keep_checkpoints = 2
  c.train.sample_every = 0          # write a sample grid every N steps; 0 = only at the end
  c.train.eval_every = 0            # run the evaluation every N steps; 0 = only with --mode=eval / at the end

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = 'ddpm'     # see diffusion.samplers.SAMPLERS
  c.sample.steps = 500          # number of denoising steps (independent of diffusion.timesteps)
  c.sample.eta = 0.0            # ddim: 0 = deterministic, 1 = as ancestral
  c.sample.guidance = 0.0       # classifier-free guidance w: (1 + w) cond - w uncond; 0 = off
  c.sample.clip_x0 = 'clip'     # none | clip | dynamic: how the predicted x0 is kept in [-1, 1]
  c.sample.dynamic_percentile = 0.995
  c.sample.per_class = 8        # sprites per class in the grid (one row per class)
  c.sample.mix = ''             # extra context mixes, e.g. 'food:0.6,symbols:0.4;0:0.5,1:0.5'
  c.sample.use_ema = True
  c.sample.seed = 0             # sprite i's noise derives from (seed, i): the same at any batch size
  c.sample.batch_size = 256     # sprites per jitted sampling call
  c.sample.gif = True           # write the denoising progression as a GIF
  c.sample.gif_frames = 25
  c.sample.upscale = 4          # nearest-neighbour factor for the PNG grids
  c.sample.sheet = True         # also write a game-ready sprite sheet: <stem>_sheet.png (RGBA) + .json atlas
  c.sample.sheet_colors = 0     # reduce the sheet to this many colours (k-means, one palette); 0 = keep all
  c.sample.sheet_upscale = 1    # integer nearest-neighbour factor of the sheet (engines usually scale it)
  c.sample.sheet_key = 24       # background: border-connected, channels >= 255 - this (> 30 eats pale sprites)

  c.show = ml_collections.ConfigDict()  # --mode=show: pictures that explain the model
  c.show.sprites = 4            # training sprites in the forward-process strip (one per class)
  c.show.forward_frames = 40    # frames of the forward-process GIF
  c.show.class_a = ''           # interpolation grid from this class (name or index; '' = the first) ...
  c.show.class_b = ''           # ... to this one ('' = the second)
  c.show.mix_rows = 4           # starting noises in the interpolation grid, one per row
  c.show.mix_steps = 7          # mixing weights 0 -> 1, one per column
  c.show.guidance_scales = '0,0.5,1,2,4'  # the guidance strip's columns (classifier-free guidance w)

  c.runtime = ml_collections.ConfigDict()
  c.runtime.compile_cache = True  # JAX persistent compilation cache in <workdir>/../.jax_cache
  c.runtime.cpu_devices = 0       # on CPU, XLA devices the batch is split over; 0 = one per core

  c.eval = ml_collections.ConfigDict()  # --mode=eval, the end of training, every train.eval_every
  c.eval.at_end = True          # evaluate when training ends (the smoke preset turns it off)
  c.eval.num_samples = 1_000    # sprites drawn per evaluation, classes as in the train split
  c.eval.samples = ''           # evaluate this samples .npz (from --mode=sample) instead of drawing
  c.eval.reference = 'test'     # split the samples are compared with: test (held out) | train
  c.eval.near_copy = 2.0        # near copy: mean |pixel diff| (0-255) to a training sprite <= this
  c.eval.knn = 3                # k of the k-NN manifolds for precision / recall (Kynkaanniemi 2019)
  c.eval.repeats = 10           # metrics averaged over this many redrawn halves of the reference
  c.eval.seed = 0               # the halves of the reference and the order of the samples
  c.eval.batch_size = 1024      # rows per block of the feature network and of pairwise distances
  c.eval.feature_steps = 1_000  # training steps of the sprite feature network (in its cache key)
  c.eval.feature_seed = 0       # its seed (in its cache key)
  c.eval.nearest_shown = 24     # closest samples drawn in nearest.png
  return c
