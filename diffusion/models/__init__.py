"""Denoising networks: f(x [B, H, W, C], t [B], context [B, K]) -> [B, H, W, C]."""
from diffusion.models.context_unet import ContextUnet

MODELS = {'context_unet': ContextUnet}


def get(name: str):
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; valid: {", ".join(sorted(MODELS))}.')
  return MODELS[name]
