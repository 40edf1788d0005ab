"""A modern denoising UNet for small sprites, in Flax, NHWC.

Taken from ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"):
the level layout (`blocks` residual blocks per level going down, `blocks + 1` coming up,
each joined to one skip activation), residual blocks with GroupNorm, SiLU and a
noise-and-class embedding applied as a scale and shift of the second norm
("use_scale_shift_norm"), multi-head self-attention at chosen resolutions, a
res-attention-res middle, an embedding made of sinusoidal features through a two-layer
MLP (width 4 x channels[0]) plus a class embedding added to it, and zero-initialised
output layers, so every residual branch starts as the identity and the whole network
starts as the constant zero.

Ours, not ADM's: the noise level is the logSNR, not a timestep, so the network works
with any schedule; the class embedding is a linear map of a context vector (one-hot
classes or mixes) plus a learned null embedding weighted by 1 - sum(context), so the
all-zero context of classifier-free guidance has a vector of its own. Downsampling is a
2x2 average pool, as in EDM2 (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models"): no parameters, and on XLA:CPU a train step costs the same
as with a strided conv. Upsampling is nearest neighbour then a 3x3 conv, which has no
checkerboard artefacts.

Patches, a switch (`patch` p > 1): the network sees p x p pixel patches as single positions
(space-to-depth, as DiT and U-ViT patchify) and returns them the same way, so a 16 px sprite is
an 8 x 8 map of 12 channels at p = 2. Its first level then works at 8 x 8 with more channels,
which XLA:CPU runs fast: at p = 2 the `cpu` preset's network without its 16 x 16 level trained
1.7 times as many sprites per second, but in the same budget drew grainier ones
(docs/ablations.md).

Self-conditioning (Chen et al. 2022, "Analog Bits"), a switch: the network also takes its own
earlier x0_hat as 3 more input channels (zeros when there is none), so a sampler's step can
refine the last estimate instead of making it anew.
"""
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGSNR_RANGE = 20.0  # logSNR is clipped to [-20, 20]: t = 0 may pass +inf


def num_groups(channels: int) -> int:
  """GroupNorm groups: up to 32, at least 4 channels each, and a divisor of `channels`."""
  groups = max(1, min(32, channels // 4))
  while channels % groups:
    groups -= 1
  return groups


def norm(x: jax.Array, dtype) -> jax.Array:
  return nn.GroupNorm(num_groups(x.shape[-1]), dtype=dtype)(x)


def zero_conv(features: int, kernel: int, dtype) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding=kernel // 2, dtype=dtype,
                 kernel_init=nn.initializers.zeros)


def fourier_features(logsnr: jax.Array, dim: int) -> jax.Array:
  """[B] -> [B, dim]: sin and cos at geometric frequencies.

  Periods run from 64 (longer than the whole clipped range of 40, so the lowest pair is
  monotone over it and never aliases) down to 1/4 (fine detail near any noise level).
  """
  half = dim // 2
  periods = jnp.geomspace(64.0, 0.25, half)
  angles = 2 * math.pi * logsnr[:, None] / periods
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Embedding(nn.Module):
  """(logSNR [B], context [B, K]) -> [B, dim], the signal every residual block receives."""
  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, logsnr, context):
    logsnr = jnp.clip(logsnr.astype(jnp.float32), -LOGSNR_RANGE, LOGSNR_RANGE)
    h = fourier_features(logsnr, self.dim // 4).astype(self.dtype)
    h = nn.Dense(self.dim, dtype=self.dtype)(h)
    noise_emb = nn.Dense(self.dim, dtype=self.dtype)(nn.silu(h))
    context = context.astype(jnp.float32)
    k = context.shape[-1]
    # N(0, 1) like ADM's nn.Embedding: the class signal starts as strong as the noise one.
    w = self.param('class_embedding', nn.initializers.normal(1.0), (k, self.dim))
    null = self.param('null_embedding', nn.initializers.normal(1.0), (self.dim,))
    class_emb = context @ w + (1.0 - context.sum(-1, keepdims=True)) * null
    return noise_emb + class_emb.astype(self.dtype)


class ResBlock(nn.Module):
  """x + branch(x), the branch's last conv zero-initialised so the block starts as identity."""
  features: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype)(nn.silu(norm(x, self.dtype)))
    scale_shift = nn.Dense(2 * self.features, dtype=self.dtype)(emb)[:, None, None, :]
    scale, shift = jnp.split(scale_shift, 2, axis=-1)
    h = norm(h, self.dtype) * (1 + scale) + shift
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = zero_conv(self.features, 3, self.dtype)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name='skip')(x)
    return x + h


class Attention(nn.Module):
  """Multi-head self-attention over the H*W positions, residual, zero-initialised output."""
  head_dim: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    qkv = nn.Dense(3 * c, dtype=self.dtype)(norm(x, self.dtype))
    h = multi_head_attention(qkv, self.head_dim, self.dtype)
    return x + nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)


def multi_head_attention(qkv: jax.Array, head_dim: int, dtype, normalize=None) -> jax.Array:
  """[B, H, W, 3C] projected q, k, v -> [B, H, W, C]: softmax(q.k / sqrt(d)) v in each head of
  head_dim channels (at least one head; widths that head_dim does not divide get fewer, wider
  heads). `normalize`, if given, maps q, k and v per head first."""
  b, height, width, c = qkv.shape[:3] + (qkv.shape[-1] // 3,)
  heads = max(1, c // head_dim)
  while c % heads:
    heads -= 1
  qkv = qkv.reshape(b, height * width, 3 * heads, c // heads)
  q, k, v = jnp.split(qkv if normalize is None else normalize(qkv), 3, axis=2)
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(c // heads)
  # Softmax in float32: bf16 logits lose the small differences between positions.
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, height, width, c)


def to_patches(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, p*p*C]: each p x p patch becomes one position."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def from_patches(x: jax.Array, p: int) -> jax.Array:
  """The inverse of to_patches."""
  b, h, w, pc = x.shape
  c = pc // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def downsample(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class UNet(nn.Module):
  """f(x [B, H, W, C], logSNR [B], context [B, num_classes]) -> [B, H, W, C] in `dtype`.

  H and W must be multiples of patch * 2 ** (len(channels) - 1). The null context is the zero
  vector. `head_dim` channels per attention head (at least one head per block).
  """
  noise_input: ClassVar[str] = 'logsnr'
  num_classes: int
  channels: tuple[int, ...] = (64, 128, 128)
  blocks: int = 2
  attention: tuple[int, ...] = (1, 2)
  head_dim: int = 32
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  self_cond: bool = False  # also take x0_self [B, H, W, C], an earlier x0_hat (None: zeros)
  patch: int = 1  # p > 1: work on p x p pixel patches (space-to-depth), see the module docstring

  # The pieces a variant may swap (mp_unet.MPUNet); the level layout in __call__ stays.
  def res(self, features, x, emb, train, decoder=False):
    del decoder  # ADM's blocks are the same on both paths
    return ResBlock(features, self.dropout, self.dtype)(x, emb, train)

  def attention_block(self, x):
    return Attention(self.head_dim, self.dtype)(x)

  def attend(self, level, x):
    return self.attention_block(x) if level in self.attention else x

  def embed(self, noise, context):
    # SiLU once here instead of in every block: ADM applies it before each block's Dense.
    return nn.silu(Embedding(4 * self.channels[0], self.dtype)(noise, context))

  def stem(self, x):
    return nn.Conv(self.channels[0], (3, 3), padding=1, dtype=self.dtype)(x.astype(self.dtype))

  def join(self, h, skip):
    return jnp.concatenate([h, skip], axis=-1)

  def up(self, h, features):
    return nn.Conv(features, (3, 3), padding=1, dtype=self.dtype)(upsample(h))

  def head(self, h, features):
    return zero_conv(features, 3, self.dtype)(nn.silu(norm(h, self.dtype)))

  @nn.compact
  def __call__(self, x, noise, context, train: bool = False, x0_self=None):
    last, out_channels = len(self.channels) - 1, x.shape[-1]
    if self.self_cond:
      x = jnp.concatenate([x, jnp.zeros_like(x) if x0_self is None else x0_self], axis=-1)
    if self.patch > 1:
      x = to_patches(x, self.patch)
    emb = self.embed(noise, context)
    h = self.stem(x)
    skips = [h]
    for level, features in enumerate(self.channels):
      for _ in range(self.blocks):
        h = self.attend(level, self.res(features, h, emb, train))
        skips.append(h)
      if level < last:
        h = downsample(h)
        skips.append(h)
    h = self.res(self.channels[-1], h, emb, train, decoder=True)
    h = self.attention_block(h)
    h = self.res(self.channels[-1], h, emb, train, decoder=True)
    for level, features in reversed(list(enumerate(self.channels))):
      for _ in range(self.blocks + 1):
        h = self.join(h, skips.pop())
        h = self.attend(level, self.res(features, h, emb, train, decoder=True))
      if level > 0:
        h = self.up(h, features)
    out = self.head(h, out_channels * self.patch ** 2).astype(self.dtype)
    return from_patches(out, self.patch) if self.patch > 1 else out
