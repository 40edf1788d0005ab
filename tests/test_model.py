"""The course's ContextUnet: shape, parameter count, and the transposed-conv rewrite."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import ContextUnet
from diffusion.models.context_unet import PatchUpsample


def test_course_model_has_the_pytorch_peers_parameter_count():
  model = ContextUnet(num_classes=5, n_feat=64)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                          jnp.zeros((1,)), jnp.zeros((1, 5)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 1_481_027  # ../shared/bench/ref_torch.py


@pytest.mark.parametrize('size', [16, 32])
def test_output_shape_matches_input(size):
  model = ContextUnet(num_classes=3, n_feat=8)
  x = jnp.ones((2, size, size, 3))
  params = model.init(jax.random.key(0), x, jnp.zeros((2,)), jnp.zeros((2, 3)))
  assert model.apply(params, x, jnp.full((2,), 0.5), jnp.eye(3)[:2]).shape == (2, size, size, 3)


def test_context_and_time_change_the_output():
  model = ContextUnet(num_classes=3, n_feat=8)
  x = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
  params = model.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1, 3)))
  out = lambda t, c: model.apply(params, x, jnp.array([t]), jnp.asarray([c], jnp.float32))
  assert not np.allclose(out(0.5, [1, 0, 0]), out(0.5, [0, 1, 0]))
  assert not np.allclose(out(0.1, [1, 0, 0]), out(0.9, [1, 0, 0]))


def test_first_block_shortcut_is_a_trained_parameter():
  """The course builds its 1x1 shortcut conv afresh on every call; here it is a parameter."""
  model = ContextUnet(num_classes=3, n_feat=8)
  x = jnp.ones((1, 16, 16, 3))
  params = model.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1, 3)))
  assert params['params']['init_conv']['shortcut']['kernel'].shape == (1, 1, 3, 8)
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, x, jnp.zeros((1,)), jnp.zeros((1, 3)))))(params)
  assert float(jnp.abs(grads['params']['init_conv']['shortcut']['kernel']).sum()) > 0


@pytest.mark.parametrize('factor', [2, 4])
def test_patch_upsample_equals_conv_transpose(factor):
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 5))
  reference = nn.ConvTranspose(7, (factor, factor), strides=(factor, factor))
  params = reference.init(jax.random.key(1), x)
  np.testing.assert_allclose(np.asarray(PatchUpsample(7, factor).apply(params, x)),
                             np.asarray(reference.apply(params, x)), atol=1e-5)
