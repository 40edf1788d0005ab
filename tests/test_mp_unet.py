"""The magnitude-preserving UNet (EDM2's layers): each piece keeps unit variance, the weights'
stored scale does not matter, and the whole network starts at zero and stays near unit size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import mp_unet
from diffusion.models.mp_unet import MPConv, MPUNet

K = 3
TINY = dict(num_classes=K, channels=(8, 16), blocks=1, attention=(1,), head_dim=8)
NOISE = jnp.array([-8.0, 0.0, 5.0, jnp.inf])
CONTEXT = jnp.concatenate([jnp.eye(K)[:3], jnp.zeros((1, K))])
X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3), np.float32))


def normal(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def rms(x):
  return float(jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))))


def test_sums_concatenations_and_silu_keep_unit_variance():
  a, b = normal(4096, 64, seed=1), normal(4096, 16, seed=2)
  assert rms(mp_unet.mp_sum(a, normal(4096, 64, seed=3), 0.3)) == pytest.approx(1, abs=0.02)
  assert rms(mp_unet.mp_cat(a, b)) == pytest.approx(1, abs=0.02)
  assert rms(mp_unet.mp_silu(a)) == pytest.approx(1, abs=0.02)
  # The concatenation's balance is of magnitudes, whatever the channel counts.
  cat = mp_unet.mp_cat(a, b, t=0.5)
  assert float(jnp.sum(jnp.square(cat[:, :64]))) == pytest.approx(
      float(jnp.sum(jnp.square(cat[:, 64:]))), rel=0.05)


@pytest.mark.parametrize('kernel', [0, 1, 3])
def test_a_layer_keeps_unit_variance_whatever_its_stored_weights_scale(kernel):
  x = normal(16, 16, 16, 32) if kernel else normal(512, 32)
  layer = MPConv(48, kernel)
  params = layer.init(jax.random.key(0), x)
  out = layer.apply(params, x)
  assert rms(out) == pytest.approx(1, abs=0.1)
  scaled = jax.tree.map(lambda w: 10 * w, params)
  np.testing.assert_allclose(layer.apply(scaled, x), out, rtol=1e-3, atol=1e-4)  # eps aside
  np.testing.assert_allclose(layer.apply(params, x, gain=0.5), 0.5 * out, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def tiny():
  model = MPUNet(**TINY)
  return model, jax.jit(model.init)(jax.random.key(0), X, NOISE, CONTEXT)


@pytest.mark.parametrize('size', [16, 32])
def test_output_shape_matches_input(size):
  model = MPUNet(**TINY)
  x, noise, context = jnp.ones((2, size, size, 3)), jnp.zeros((2,)), jnp.eye(K)[:2]
  params = jax.eval_shape(model.init, jax.random.key(0), x, noise, context)
  assert jax.eval_shape(model.apply, params, x, noise, context).shape == (2, size, size, 3)


def with_gains(params, out=1.0, emb=1.0):
  """The learned gains (the output's and each block's embedding scale) start at 0: set them."""
  def set_gain(path, p):
    name = str(path[-1])
    return jnp.full_like(p, out if 'out_gain' in name else emb) if 'gain' in name else p
  return jax.tree_util.tree_map_with_path(set_gain, params)


def test_starts_at_zero_and_then_keeps_unit_size_at_every_noise_level(tiny):
  model, params = tiny
  assert not jnp.any(model.apply(params, X, NOISE, CONTEXT))
  out = model.apply(with_gains(params, out=1.0, emb=0.0), X, NOISE, CONTEXT)
  for example in out:
    assert 0.5 < rms(example) < 2


def test_noise_level_and_class_change_the_output(tiny):
  model, params = tiny
  params = with_gains(params)
  same_noise = jnp.zeros(4)
  out = model.apply(params, X[:1].repeat(4, 0), same_noise, CONTEXT)
  assert all(float(jnp.max(jnp.abs(out[i] - out[-1]))) > 1e-3 for i in range(3))  # classes, null
  out = model.apply(params, X[:1].repeat(4, 0), NOISE, jnp.zeros((4, K)))
  assert all(float(jnp.max(jnp.abs(out[i] - out[i + 1]))) > 1e-3 for i in range(3))


def test_bfloat16_compute_is_finite_and_keeps_float32_params():
  model = MPUNet(**TINY, dtype=jnp.bfloat16)
  params = model.init(jax.random.key(0), X, NOISE, CONTEXT)
  out = model.apply(with_gains(params), X, NOISE, CONTEXT)
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_the_cpu_presets_layout_has_about_the_adm_networks_parameters():
  """Widths 16/32/80, attention at 4x4, 8 classes: 1,001,276 against the UNet's 1,005,107
  (no biases and no norms, a ones channel into the stem, a gain per block)."""
  model = MPUNet(num_classes=8, channels=(16, 32, 80), blocks=1, attention=(2,))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                          jnp.zeros((1,)), jnp.zeros((1, 8)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 1_001_276
