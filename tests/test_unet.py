"""The modern UNet: shapes, parameter counts, conditioning, bf16, dropout, zero start.

One tiny model (with dropout, inactive unless train=True), one batch size and one set of
parameters throughout, so the file compiles only a few functions. Random numbers come from
numpy or from RBG keys: on XLA:CPU each threefry draw costs up to a second of compilation,
and a UNet's init makes dozens of them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models.unet import UNet, from_patches, num_groups, to_patches

K = 3
TINY = dict(num_classes=K, channels=(8, 16), blocks=1, attention=(1,), head_dim=8, dropout=0.5)
# One batch of the same image at several (logSNR, context) pairs; examples are independent.
NOISE = jnp.array([0.0, 0.0, 0.0, 0.0, -5.0, 5.0, jnp.inf, 20.0])
CONTEXT = jnp.concatenate([jnp.eye(K), jnp.zeros((1, K)), jnp.tile(jnp.eye(K)[:1], (4, 1))])
X = jnp.tile(np.random.default_rng(2).standard_normal((1, 16, 16, 3), np.float32),
             (len(NOISE), 1, 1, 1))


def randomised(params, scale=0.3):
  """The zero-initialised layers make every output 0 at init; perturb all weights."""
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape, np.float32), params)


def key(seed):
  return jax.random.key(seed, impl='rbg')


@pytest.fixture(scope='module')
def tiny():
  model = UNet(**TINY)
  initial = jax.jit(model.init)(key(0), X, NOISE, CONTEXT)
  return jax.jit(model.apply, static_argnames='train'), initial


@pytest.mark.parametrize('size', [16, 32])
def test_output_shape_matches_input(size):
  model = UNet(**TINY)
  x, noise, context = jnp.ones((2, size, size, 3)), jnp.zeros((2,)), jnp.eye(K)[:2]
  params = jax.eval_shape(model.init, jax.random.key(0), x, noise, context)
  out = jax.eval_shape(model.apply, params, x, noise, context)
  assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize('config, count', [
    (dict(num_classes=5), 7_097_731),
    (TINY, 48_235),  # counted by hand, layer by layer
])
def test_parameter_count(config, count):
  model = UNet(**config)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                          jnp.zeros((1,)), jnp.zeros((1, config['num_classes'])))
  assert sum(x.size for x in jax.tree.leaves(params)) == count


def test_patches_keep_each_pixel_block_together_and_invert():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 16, 16, 3), np.float32))
  patches = to_patches(x, 2)
  assert patches.shape == (2, 8, 8, 12)
  np.testing.assert_array_equal(patches[:, 3, 5].reshape(2, 2, 2, 3), x[:, 6:8, 10:12])
  np.testing.assert_array_equal(from_patches(patches, 2), x)


@pytest.mark.parametrize('size', [16, 32])
def test_patch_2_draws_whole_sprites_with_wider_first_and_last_convs(size):
  """The input conv takes 12 channels instead of 3 (+9 x 9 x 8 weights), the output conv gives
  12 (+9 x 9 x 8 weights, +9 biases); everything else is the same network."""
  model = UNet(**TINY, patch=2)
  x, noise, context = jnp.ones((2, size, size, 3)), jnp.zeros((2,)), jnp.eye(K)[:2]
  params = jax.eval_shape(model.init, jax.random.key(0), x, noise, context)
  out = jax.eval_shape(model.apply, params, x, noise, context)
  assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32
  assert sum(p.size for p in jax.tree.leaves(params)) == 48_235 + 648 + 657


def test_self_conditioning_takes_an_earlier_estimate_as_three_more_channels():
  """3 x 3 x 3 x 8 more input weights; None is the zeros of 'no estimate yet'; it matters."""
  model = UNet(**TINY, self_cond=True)
  initial = jax.jit(model.init)(key(0), X, NOISE, CONTEXT)
  count = lambda p: sum(x.size for x in jax.tree.leaves(p))
  assert count(initial) == 48_235 + 3 * 3 * 3 * 8
  params = randomised(initial)
  apply = jax.jit(model.apply)
  none, zeros = apply(params, X, NOISE, CONTEXT), apply(params, X, NOISE, CONTEXT, x0_self=0 * X)
  assert none.shape == X.shape
  np.testing.assert_array_equal(none, zeros)
  assert not np.allclose(apply(params, X, NOISE, CONTEXT, x0_self=X), none, atol=1e-4)


def test_output_is_exactly_zero_at_initialisation(tiny):
  """Zero-initialised output conv: training starts from f = 0, whatever the input."""
  apply, initial = tiny
  assert np.all(np.asarray(apply(initial, X, NOISE, CONTEXT)) == 0.0)


def test_noise_level_and_context_change_the_output(tiny):
  apply, initial = tiny
  out = np.asarray(apply(randomised(initial), X, NOISE, CONTEXT))
  differ = lambda i, j: not np.allclose(out[i], out[j], atol=1e-4)
  assert differ(0, 1) and differ(1, 2) and differ(0, 2)  # the classes
  assert differ(3, 0) and differ(3, 1) and differ(3, 2)  # the null context against each class
  assert differ(4, 5) and differ(4, 0)  # the noise level
  # logSNR is clipped to [-20, 20]: t = 0 may hand the network +inf.
  assert np.all(np.isfinite(out[6]))
  np.testing.assert_array_equal(out[6], out[7])


def test_bfloat16_compute_is_finite_and_keeps_float32_params(tiny):
  _, initial = tiny
  params = randomised(initial)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  model = UNet(**TINY, dtype=jnp.bfloat16)

  def loss(p):
    out = model.apply(p, X, NOISE, CONTEXT)
    return jnp.mean(jnp.square(out.astype(jnp.float32))), out.dtype == jnp.bfloat16

  (value, is_bf16), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert bool(is_bf16)
  assert np.isfinite(float(value)) and float(value) > 0
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_dropout_only_in_training(tiny):
  apply, initial = tiny
  args = (randomised(initial), X, NOISE, CONTEXT)
  np.testing.assert_array_equal(apply(*args), apply(*args))
  first = apply(*args, train=True, rngs={'dropout': key(3)})
  second = apply(*args, train=True, rngs={'dropout': key(4)})
  assert not np.allclose(first, second, atol=1e-4)
  assert not np.allclose(first, apply(*args), atol=1e-4)


def test_group_count_divides_small_widths():
  assert [num_groups(c) for c in (3, 8, 16, 48, 64, 96, 256)] == [1, 2, 4, 12, 16, 24, 32]
