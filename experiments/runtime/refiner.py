"""The refiner: a copy of the drawing weights fine-tuned for the refining pass alone.

The refining pass (sample.refine_draws, samplers.refine) noises the drawn sprites again to one
nearly clean level and averages the network's x0_hat over several noisings. Trained on the
squared error, that x0_hat is the mean of the clean sprites that could lie under the noise:
where the network is unsure between a fill's color and its neighbour's it paints a blend, a
different one at each noising, and the average keeps some of it as confetti. On the absolute
error it is their median, one color or the other, but a network trained on it throughout
draws in fewer colors (docs/ablations.md, "The l1 norm"). The refiner takes both: the run's
weights draw as before, and a copy of them fine-tuned a few hundred steps with the l1 norm on
nearly clean levels only (train.refiner_*), where the layout and colors are already settled,
does the refining pass. The default norm, l1_tv, adds the error's total variation, which
prices a speckle in a flat fill above a shift of the whole fill (diffusion/losses.py).

Kept in <workdir>/refiner/<step>, <step> being the step of the weights it was fine-tuned from,
with its settings and those weights' fingerprint (integrity.fingerprint) in the checkpoint's
metadata; every refiner is kept. It is fine-tuned after the last training step, from the weights
that draw (EMA if sample.use_ema), deterministically: a run stopped while it is fine-tuned
(seconds to a minute) fine-tunes it again when run again.
"""
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from diffusion import samplers
from experiments.runtime import checkpoints, integrity, parallel, state as state_lib, train_step

FOLDER = 'refiner'
KEY_STREAM = 2  # its batches: fold_in(key(seed), 2), beside the initial weights' 0 and training's 1
WARMUP_STEPS = 50  # Adam's moments start at zero: a short warm-up, then a cosine to zero


class Refined(NamedTuple):
  """What draws (weights, or drawing.Guided with autoguidance's guide), and the refiner that
  does the refining pass: unguided by autoguidance, whose guide is the drawing weights' past."""
  params: Any
  refiner: Any


def settings(steps: int, logsnr: tuple[float, float], norm: str, learning_rate: float) -> dict:
  """What a refiner was fine-tuned with (train.refiner_*), as stored in its metadata."""
  return {'steps': int(steps), 'logsnr': [float(x) for x in logsnr], 'norm': str(norm),
          'learning_rate': float(learning_rate)}


def _manager(workdir: str, create: bool = False):
  # Every refiner is kept: each is the only one of its weights, and small.
  return checkpoints.manager(workdir, 2**31 - 1, create=create, folder=FOLDER)


def _records(workdir: str) -> dict[int, dict]:
  """{step: what its refiner's metadata records (settings, source)}; an unreadable record is a
  CheckpointError that says what to do."""
  if not os.path.isdir(os.path.join(workdir, FOLDER)):
    return {}
  mngr = _manager(workdir)
  records = {}
  for step in mngr.all_steps():
    record = checkpoints.custom_metadata(mngr, step)
    if not {'refiner', 'source'} <= set(record):
      raise checkpoints.CheckpointError(
          f'{os.path.join(workdir, FOLDER, str(step))} holds no readable record of how its refiner '
          'was fine-tuned, or from which weights: move it away, then run the training command '
          'again to fine-tune a new one (it does not train further), or set sample.refiner=False.')
    records[step] = record
  return records


def saved(workdir: str) -> dict[int, dict]:
  """{step of the weights it came from: settings} of every refiner the workdir holds."""
  return {step: record['refiner'] for step, record in _records(workdir).items()}


def _check_source(workdir: str, step: int, record: dict, params) -> None:
  """Raise if the refiner of `step` (its `record`) was fine-tuned from other weights than
  `params` (the workdir trained again from scratch, or sample.use_ema changed which draw)."""
  if record['source'] != integrity.fingerprint(params):
    raise ValueError(
        f'The refiner in {os.path.join(workdir, FOLDER, str(step))} was fine-tuned from other '
        f'weights than the step-{step} weights drawing now (trained again since, or another '
        'sample.use_ema). It was left as it is: move it away and run the training command again '
        'to fine-tune one from these (it does not train further), or set sample.refiner=False.')


def _check_settings(workdir: str, step: int, record: dict, want: dict) -> None:
  if record['refiner'] != want:
    raise ValueError(
        f'{os.path.join(workdir, FOLDER, str(step))} holds a refiner fine-tuned with '
        f'{record["refiner"]}, not the configured {want} (train.refiner_*). It was left as it is: '
        'set those back, or move that folder away to fine-tune another.')


def check_same(workdir: str, step: int, want: dict) -> None:
  """Raise if the workdir holds a refiner of `step` fine-tuned with other settings than `want`:
  fine-tuning again would overwrite it."""
  record = _records(workdir).get(step)
  if record is not None:
    _check_settings(workdir, step, record, want)


def held(workdir: str, step: int, want: dict, params) -> bool:
  """Whether the workdir holds the refiner `want` describes of `step`'s weights `params`;
  raises if it holds another one there (other settings, or other weights)."""
  record = _records(workdir).get(step)
  if record is None:
    return False
  _check_settings(workdir, step, record, want)
  _check_source(workdir, step, record, params)
  return True


def _wanted(sample_cfg, step: int | None) -> bool:
  """Whether drawing `step`'s weights would refine with a refiner of them, if the workdir has one."""
  return bool(sample_cfg.refine_draws and sample_cfg.refiner and step is not None)


def steps_for(workdir: str, step: int | None, sample_cfg) -> int:
  """The steps of the refiner that does the refining pass of `step`'s weights: 0 for none (no
  pass, sample.refiner=False, or no refiner of that step in the workdir: the pass then uses
  the drawing weights; a run fine-tunes its refiner after its last step)."""
  return saved(workdir).get(step, {}).get('steps', 0) if _wanted(sample_cfg, step) else 0


def attach(params, weights, workdir: str, step: int | None, sample_cfg, mesh, **state_kwargs):
  """`params` (what draws: `weights`, or their Guided pair), or Refined(params, the refiner of
  `step`'s `weights`) when the refining pass uses one (steps_for), checked and restored."""
  record = _records(workdir).get(step) if _wanted(sample_cfg, step) else None
  if record is None:
    return params
  _check_source(workdir, step, record, weights)
  lo, hi = record['refiner']['logsnr']
  if not lo <= sample_cfg.refine_logsnr <= hi:
    raise ValueError(
        f'sample.refine_logsnr={sample_cfg.refine_logsnr:g}: the refiner of step {step} was '
        f'fine-tuned on logSNR {lo:g}..{hi:g} only; refine within that, or set '
        'sample.refiner=False to refine with the drawing weights.')
  abstract = state_lib.abstract_state(mesh=mesh, **state_kwargs).params
  tree = checkpoints.restore_step(
      _manager(workdir), step, {'params': abstract},
      why=f'The refining pass denoises with the refiner of step {step}',
      fix=f'move {os.path.join(workdir, FOLDER, str(step))} away and run the training command '
          'again (it fine-tunes a new one without training further), or set sample.refiner=False')
  return Refined(params, tree['params'])


def _optimizer(want: dict, adam_b2: float, grad_clip: float) -> optax.GradientTransformation:
  """Adam at want's learning rate: WARMUP_STEPS of warm-up, then a cosine to zero."""
  steps, warmup = want['steps'], min(WARMUP_STEPS, want['steps'])
  tx = optax.adam(optax.join_schedules(
      [optax.linear_schedule(0.0, want['learning_rate'], warmup),
       optax.cosine_decay_schedule(want['learning_rate'], max(steps - WARMUP_STEPS, 1))],
      [warmup]), b2=adam_b2)
  return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx


def _save(workdir: str, step: int, refiner_params, want: dict, source) -> None:
  try:
    checkpoints.save(_manager(workdir, create=True), step, {'params': refiner_params},
                     metadata={'refiner': want, 'source': integrity.fingerprint(source)})
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f'Saving the refiner of step {step} in {os.path.join(workdir, FOLDER)} failed '
        f'({checkpoints.short_error(e.__cause__)}). The training checkpoints are untouched: fix '
        'the cause (disk space, permissions) and run the training command again, which '
        'fine-tunes it again.') from e


def fine_tune(*, want: dict, params, step: int, workdir: str, images, labels, mesh, seed: int,
              logsnr_fn, step_kwargs: dict, adam_b2: float = 0.999, grad_clip: float = 0.0) -> None:
  """Fine-tune a copy of `params` (the weights of `step` that draw) as `want` says and save it.

  step_kwargs: runtime.train_step.make_one_step's keywords for the run (model, loss, batch, EMA),
  of which the loss norm, the noise levels, the optimizer and the EMA half-life are replaced.
  adam_b2, grad_clip: the run's (train.adam_beta2, train.grad_clip).
  """
  lo, hi = want['logsnr']
  level_range = (float(samplers.time_at(logsnr_fn, hi)), float(samplers.time_at(logsnr_fn, lo)))
  steps, batch_size = want['steps'], step_kwargs['batch_size']
  tx = _optimizer(want, adam_b2, grad_clip)
  kwargs = {**step_kwargs, 'tx': tx, 'level_range': level_range, 'steps_per_dispatch': 1,
            'loss_kwargs': {**step_kwargs['loss_kwargs'], 'norm': want['norm']},
            # the average of its last eighth or so (the run's ramp-up applies as well)
            'ema_halflife_kimg': steps * batch_size / 8 / 1000}
  step_fn = train_step.make(mesh=mesh, **kwargs)
  start = jax.jit(lambda p: state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, p),
      ema_params=jax.tree.map(jnp.copy, p), opt_state=tx.init(p)),
      out_shardings=parallel.replicated(mesh))
  state = start(params)
  key = jax.random.fold_in(jax.random.key(seed), KEY_STREAM)
  logging.info('Fine-tuning the refiner of step %d: %d steps, %s norm, logSNR %g..%g.', step,
               steps, want['norm'], lo, hi)
  losses, window = [], parallel.Window()  # a queue of unread steps can hang XLA:CPU's devices
  for _ in range(steps):
    state, metrics = step_fn(state, images, labels, key)
    window.add(metrics)
    losses.append(metrics['loss'])
  losses = np.asarray(jax.device_get(losses))
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(
        f'The refiner of step {step} diverged (loss {losses[~np.isfinite(losses)][0]} at its '
        f'step {int(np.argmax(~np.isfinite(losses))) + 1}); nothing was saved. Lower '
        'train.refiner_learning_rate, or set train.refiner_steps=0.')
  _save(workdir, step, state.ema_params, want, params)
  last = min(100, steps)
  logging.info('Saved the refiner of step %d in %s (mean loss of its last %d steps %.4f).', step,
               os.path.join(workdir, FOLDER), last, float(losses[-last:].mean()))
