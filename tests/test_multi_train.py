"""k models in one vmapped step compute what k separate runs compute."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from experiments import from_config
from experiments.runtime import multi_train, parallel, state as state_lib, train_step

# Two models that differ in every number they may differ in (from_config.VALUE_KEYS).
MEMBERS = [{'seed': 0},
           {'seed': 1, 'train.learning_rate': 0.02, 'train.ema_halflife_kimg': 0.2,
            'train.ema_rampup': 0.0, 'diffusion.cond_drop_rate': 0.5,
            'diffusion.min_snr_gamma': 1.0, 'diffusion.sigmoid_bias': 1.0,
            'diffusion.sigma_data': 0.7}]


def _configs(data_dir, norm='l2'):
  out = []
  for overrides in MEMBERS:
    c = tiny_config(data_dir, **{k: v for k, v in overrides.items() if '.' in k})
    c.seed = overrides['seed']
    c.diffusion.loss_weighting = 'min_snr'
    c.diffusion.loss_norm = norm
    out.append(c)
  return out


def _data(mesh):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
  return parallel.put_replicated((images, np.arange(40, dtype=np.int32) % 8), mesh)


def _separately(config, mesh, data, steps):
  model = from_config.model(config.model, 8)
  # SGD: Adam's m / sqrt(v) turns rounding noise in gradients that are 0 by construction (conv
  # biases before GroupNorm) into steps of +-lr; test_optimizer_scaled_by_the_peak covers Adam.
  tx = optax.sgd(config.train.learning_rate)
  step = train_step.make(mesh=mesh, model=model, tx=tx,
                         **from_config.train_step_kwargs(config, 8, 'cpu'))
  state = state_lib.create(model=model, tx=tx, seed=config.seed, image_size=16, num_classes=8,
                           mesh=mesh)
  key = state_lib.train_key(config.seed)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, *data, key)
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses


def _together(configs, mesh, data, steps):
  model, tx = from_config.model(configs[0].model, 8), optax.sgd(1.0)
  kwargs = {**from_config.multi_train_kwargs(configs, 8, 'cpu'), 'unit_tx': tx}
  step = multi_train.make(model=model, mesh=mesh, **kwargs)
  states = multi_train.stack([state_lib.create(model=model, tx=tx, seed=c.seed, image_size=16,
                                               num_classes=8, mesh=mesh) for c in configs], mesh)
  keys = multi_train.train_keys([c.seed for c in configs], mesh)
  settings = multi_train.stack([from_config.member_settings(c) for c in configs], mesh)
  losses = []
  for _ in range(steps):
    states, metrics = step(states, *data, keys, settings)
    losses.append(np.asarray(metrics['loss']))
  return [jax.device_get(s) for s in multi_train.unstack(states, mesh)], np.stack(losses, 1)


@pytest.mark.parametrize('norm', ['l2', 'l1'])
def test_vmapped_models_equal_separate_runs(data_dir, norm):
  configs = _configs(data_dir, norm)
  mesh = parallel.make_mesh()
  data = _data(mesh)
  together, losses = _together(configs, mesh, data, 2)
  assert not np.allclose(losses[0], losses[1])  # the two really are different models
  for i, config in enumerate(configs):
    alone, alone_losses = _separately(config, mesh, data, 2)
    np.testing.assert_allclose(losses[i], alone_losses, rtol=1e-5)
    assert int(together[i].step) == int(alone.step) == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 (together[i].params, together[i].ema_params), (alone.params, alone.ema_params))


@pytest.mark.parametrize('train', [
    {'lr_schedule': 'cosine', 'warmup_steps': 2},
    {'lr_schedule': 'linear', 'weight_decay': 0.1, 'grad_clip': 0.5, 'adam_beta2': 0.99}])
def test_optimizer_scaled_by_the_peak_equals_the_optimizer_at_that_peak(train):
  """multi_train builds each group's optimizer once with peak 1 and scales by each model's peak."""
  config = tiny_config('unused', **{f'train.{k}': v for k, v in train.items()})
  config.train.update(steps=6, learning_rate=3e-3)
  unit = from_config.multi_train_kwargs([config], 8, 'cpu')['unit_tx']
  tx, scaled = from_config.optimizer(config.train), multi_train.scaled(unit, 3e-3)
  params = {'w': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  state_a, state_b = tx.init(params), scaled.init(params)
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)  # checkpoints interchange
  for i in range(6):
    grads = {'w': jnp.sin(params['w'] * (i + 1))}
    a, state_a = tx.update(grads, state_a, params)
    b, state_b = scaled.update(grads, state_b, params)
    np.testing.assert_allclose(b['w'], a['w'], rtol=1e-5, atol=1e-9)
