"""The UNet with EDM2's magnitude-preserving layers (Karras et al. 2024, "Analyzing and Improving
the Training Dynamics of Diffusion Models", its table 1's configs D, F and G and part of C, not
E): a switch, `model.name=unet_mp`.

The same level layout as unet.UNet; what changes is how each layer treats magnitudes. EDM2
found that in a standard UNet activations and weights drift in size over training, and
normalisation layers hide it rather than stop it; it removes them and makes every layer keep
unit-variance inputs at unit variance instead:
- every conv and dense weight is normalised to unit norm per output channel in the forward
  pass, so the stored weights' size does not matter (no biases, no GroupNorm);
- SiLU is divided by 0.596, its output's RMS for unit-normal input;
- residual sums and skip concatenations are weighted sums whose weights keep unit variance
  (res balance 0.3, attention 0.3, concatenation 0.5, EDM2's values);
- encoder blocks pixel-normalise their input, attention normalises q, k and v per head
  (cosine attention), and the stem sees a constant ones channel in place of a bias;
- the noise and class embeddings are summed the same way, and the output layer and each
  block's embedding scale have learned gains that start at 0 (the network starts as zero).

Not taken: config E, forced weight normalisation of the stored weights with an inverse-square-
root learning-rate decay (the forward pass normalises the weights either way; over a short run
their slow growth acts as a gentle decay of the step, beside the presets' own decay); config
B's learned per-level loss weights (tried on the ADM-style network, patched in: on emoji
grainier and further from real, docs/ablations.md); the clip of activations at +-256; and
EDM2's downsampling blocks (the layout's 2x2 average pool goes to the skips as it is, a little
under unit size, where EDM2's block would normalise it). Adam's steps are relative to
unit-size weights here, so this network wants a higher learning rate than the ADM one (EDM2:
1e-2).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.models.unet import (LOGSNR_RANGE, UNet, fourier_features, multi_head_attention,
                                   upsample)

RES_BALANCE = 0.3
ATTN_BALANCE = 0.3
CONCAT_BALANCE = 0.5
SILU_RMS = 0.596  # RMS of silu(z) for z ~ N(0, 1)
EPS = 1e-4


def mp_silu(x: jax.Array) -> jax.Array:
  return nn.silu(x) / SILU_RMS


def mp_sum(a: jax.Array, b: jax.Array, t: float) -> jax.Array:
  """(1 - t) a + t b, rescaled to unit variance for independent unit-variance a and b."""
  return ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: jax.Array, b: jax.Array, t: float = CONCAT_BALANCE) -> jax.Array:
  """Channel concatenation weighting a by 1 - t and b by t (as mp_sum), whatever the channel
  counts, rescaled to unit variance."""
  na, nb = a.shape[-1], b.shape[-1]
  scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
  return jnp.concatenate([a * (scale * (1 - t) / math.sqrt(na)),
                          b * (scale * t / math.sqrt(nb))], axis=-1)


def pixel_norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """Unit RMS over `axis` (the channels of each position)."""
  rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
  return (x / (EPS + rms)).astype(x.dtype)


class MPConv(nn.Module):
  """A k x k conv (k = 0: a dense layer) whose weight is normalised to unit norm per output
  channel on every call, times `gain`: unit-variance in, unit-variance out."""
  features: int
  kernel: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, gain=1.0):
    shape = ((x.shape[-1],) if self.kernel == 0 else (self.kernel, self.kernel, x.shape[-1]))
    w = self.param('weight', nn.initializers.normal(1.0), shape + (self.features,))
    fan_in = math.prod(shape)
    norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(range(len(shape))), keepdims=True))
    w = w / (EPS * math.sqrt(fan_in) + norm) * gain
    w, x = w.astype(self.dtype), x.astype(self.dtype)
    if self.kernel == 0:
      return x @ w
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class MPEmbedding(nn.Module):
  """(logSNR [B], context [B, K]) -> [B, dim]: Fourier features and the class (or null) as
  one-hot-like inputs of two normalised dense layers, summed magnitude-preservingly."""
  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, logsnr, context):
    logsnr = jnp.clip(logsnr.astype(jnp.float32), -LOGSNR_RANGE, LOGSNR_RANGE)
    # sin and cos have mean square 1/2: sqrt(2) makes the features unit-variance.
    noise_emb = MPConv(self.dim, 0, self.dtype)(math.sqrt(2) * fourier_features(logsnr, self.dim))
    context = context.astype(jnp.float32)
    # The null class is one more input: the all-zero context of guidance gets its own vector.
    classes = jnp.concatenate([context, 1.0 - context.sum(-1, keepdims=True)], axis=-1)
    class_emb = MPConv(self.dim, 0, self.dtype)(classes * math.sqrt(classes.shape[-1]))
    return mp_silu(mp_sum(noise_emb, class_emb, 0.5))


class MPBlock(nn.Module):
  """EDM2's residual block: mp_sum(x, branch(x), 0.3), the embedding scaling the branch by
  1 + gain * dense(emb), the gain starting at 0."""
  features: int
  decoder: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    skip = x.shape[-1] != self.features
    if not self.decoder:
      if skip:
        x = MPConv(self.features, 1, self.dtype, name='skip')(x)
      x = pixel_norm(x)
    h = MPConv(self.features, 3, self.dtype)(mp_silu(x))
    gain = self.param('emb_gain', nn.initializers.zeros, ())
    scale = MPConv(self.features, 0, self.dtype)(emb, gain=gain) + 1
    h = mp_silu(h * scale[:, None, None, :])
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = MPConv(self.features, 3, self.dtype)(h)
    if self.decoder and skip:
      x = MPConv(self.features, 1, self.dtype, name='skip')(x)
    return mp_sum(x, h, RES_BALANCE)


class MPAttention(nn.Module):
  """Self-attention with q, k and v normalised per head (cosine attention), mp_sum'd back."""
  head_dim: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = multi_head_attention(MPConv(3 * c, 1, self.dtype)(x), self.head_dim, self.dtype,
                             normalize=pixel_norm)
    return mp_sum(x, MPConv(c, 1, self.dtype)(h), ATTN_BALANCE)


class MPUNet(UNet):
  """unet.UNet's layout with the magnitude-preserving pieces above."""

  def res(self, features, x, emb, train, decoder=False):
    return MPBlock(features, decoder, self.dropout, self.dtype)(x, emb, train)

  def attention_block(self, x):
    return MPAttention(self.head_dim, self.dtype)(x)

  def embed(self, noise, context):
    return MPEmbedding(4 * self.channels[0], self.dtype)(noise, context)

  def stem(self, x):
    ones = jnp.ones_like(x[..., :1])  # EDM2's stand-in for a bias
    return MPConv(self.channels[0], 3, self.dtype)(jnp.concatenate([x, ones], axis=-1))

  def join(self, h, skip):
    return mp_cat(h, skip)

  def up(self, h, features):
    return MPConv(features, 3, self.dtype)(upsample(h))

  def head(self, h, features):
    gain = self.param('out_gain', nn.initializers.zeros, ())
    return MPConv(features, 3, self.dtype)(h, gain=gain)
