"""Denoising networks: f(x [B, H, W, C], noise level [B], context [B, K], train) -> [B, H, W, C].

The noise level a network is fed is its class's `noise_input`: the course's ContextUnet takes the
time t in [0, 1] (as the course does), the UNet takes logSNR, which makes it independent of the
schedule it was trained with.
"""
from diffusion import registry
from diffusion.models.context_unet import ContextUnet
from diffusion.models.mp_unet import MPUNet
from diffusion.models.unet import UNet

MODELS = {'context_unet': ContextUnet, 'unet': UNet, 'unet_mp': MPUNet}


def get(name: str):
  return registry.lookup(MODELS, name, 'model')


def network_fn(model, params, *, train: bool = False, dropout_key=None):
  """(x_in, t, logsnr, context[, x0_self]) -> output of `model` with `params`, fed its own noise
  input (x0_self: a self-conditioned UNet's earlier x0_hat).

  With train=True, dropout draws from `dropout_key`.
  """
  by_logsnr = model.noise_input == 'logsnr'
  rngs = None if dropout_key is None else {'dropout': dropout_key}

  def fn(x, t, logsnr, context, x0_self=None):
    extra = {} if x0_self is None else {'x0_self': x0_self}  # only a self-conditioned UNet takes it
    return model.apply(params, x, logsnr if by_logsnr else t, context, train=train, rngs=rngs,
                       **extra)
  return fn
