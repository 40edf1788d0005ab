"""The course's ContextUnet ("How Diffusion Models Work"), in Flax, NHWC.

Faithful in shape: two residual down stages, a 1x1 bottleneck vector, and two up stages
where the context embedding multiplies and the time embedding is added
(`c_emb * up + t_emb`). With n_feat = 64 and 5 classes it has the PyTorch peer's
1,481,027 parameters. Two deliberate differences from the course:

* The first residual block's 1x1 shortcut conv is a learned layer. The course builds a
  fresh, randomly initialized conv on every call, so that shortcut never trains.
* GroupNorm(8) replaces BatchNorm (same parameter count). Batch statistics make a
  sprite depend on its batch-mates, need running averages and mutable state, and differ
  between training (mixed noise levels) and sampling (one noise level per batch).
"""
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

GROUPS = 8


class PatchUpsample(nn.Module):
  """nn.ConvTranspose with kernel = stride, as one matmul and a reshape.

  With non-overlapping patches every output pixel is one input pixel times one kernel
  tap, so the transposed conv is an einsum. Same parameters and outputs as
  nn.ConvTranspose(features, (k, k), strides=(k, k)) (a test pins this), but XLA:CPU
  runs it several times faster than its dilated-convolution lowering.
  """
  features: int
  factor: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, (b, h, w, c) = self.factor, x.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    # nn.ConvTranspose (transpose_kernel=False) applies the spatially flipped kernel.
    kernel = kernel[::-1, ::-1].astype(self.dtype)
    y = jnp.einsum('bhwc,ijco->bhiwjo', x.astype(self.dtype), kernel)
    return y.reshape(b, h * k, w * k, self.features) + bias.astype(self.dtype)


class ResidualConvBlock(nn.Module):
  features: int
  residual: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x
    for _ in range(2):
      h = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype)(h)
      h = nn.gelu(nn.GroupNorm(GROUPS, dtype=self.dtype)(h), approximate=False)
    if not self.residual:
      return h
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name='shortcut')(x)
    return (x + h) / 1.414  # the course's variance-preserving sum


class EmbedFC(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(self.features, dtype=self.dtype)(x), approximate=False)
    return nn.Dense(self.features, dtype=self.dtype)(x)[:, None, None, :]


class UnetDown(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResidualConvBlock(self.features, dtype=self.dtype)(x)
    x = ResidualConvBlock(self.features, dtype=self.dtype)(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class UnetUp(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip):
    x = jnp.concatenate([x, skip], axis=-1)
    x = PatchUpsample(self.features, 2, dtype=self.dtype)(x)
    x = ResidualConvBlock(self.features, dtype=self.dtype)(x)
    return ResidualConvBlock(self.features, dtype=self.dtype)(x)


class ContextUnet(nn.Module):
  """eps_theta(x, t, c): x [B, H, W, C] in [-1, 1] scale, t [B] in [0, 1], c [B, num_classes].

  H must be a multiple of 4. The null context is the zero vector. No dropout: `train` is
  accepted so that every model has one signature.
  """
  noise_input: ClassVar[str] = 't'
  num_classes: int
  n_feat: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, c, train: bool = False):
    del train
    nf, dt, size, channels = self.n_feat, self.dtype, x.shape[1], x.shape[-1]
    x = x.astype(dt)
    x = ResidualConvBlock(nf, residual=True, dtype=dt, name='init_conv')(x)
    down1 = UnetDown(nf, dtype=dt, name='down1')(x)
    down2 = UnetDown(2 * nf, dtype=dt, name='down2')(down1)
    hidden = nn.gelu(jnp.mean(down2, axis=(1, 2), keepdims=True), approximate=False)

    t = t.reshape(-1, 1).astype(dt)
    c = c.astype(dt)
    c_emb1, t_emb1 = EmbedFC(2 * nf, dt, name='contextembed1')(c), EmbedFC(2 * nf, dt, name='timeembed1')(t)
    c_emb2, t_emb2 = EmbedFC(nf, dt, name='contextembed2')(c), EmbedFC(nf, dt, name='timeembed2')(t)

    up1 = PatchUpsample(2 * nf, size // 4, dtype=dt, name='up0')(hidden)
    up1 = nn.relu(nn.GroupNorm(GROUPS, dtype=dt)(up1))
    up2 = UnetUp(nf, dtype=dt, name='up1')(c_emb1 * up1 + t_emb1, down2)
    up3 = UnetUp(nf, dtype=dt, name='up2')(c_emb2 * up2 + t_emb2, down1)
    out = nn.Conv(nf, (3, 3), padding=1, dtype=dt)(jnp.concatenate([up3, x], axis=-1))
    out = nn.relu(nn.GroupNorm(GROUPS, dtype=dt)(out))
    return nn.Conv(channels, (3, 3), padding=1, dtype=dt)(out)
