"""Denoising networks: f(x [B, H, W, C], noise level [B], context [B, K]) -> [B, H, W, C]."""
from diffusion import registry
from diffusion.models.context_unet import ContextUnet

MODELS = {'context_unet': ContextUnet}


def get(name: str):
  return registry.lookup(MODELS, name, 'model')
