"""What a workdir's config.json says trained its weights, checked against this run's config.

A checkpoint's arrays fix the network's shapes, not what its output means: resumed, drawn from or
evaluated with another noise schedule, prediction target or sprite size, a workdir's weights would
be trained or read as something they are not, its config.json rewritten to say so, and its
samples' files (whose names carry none of these) overwritten.
"""
import json
import os

from experiments.runtime import files

# The forward process and the target.
_SCHEDULE = ('schedule', 'timesteps', 'beta_start', 'beta_end', 'cosine_s', 'sigmoid_start',
             'sigmoid_end', 'sigmoid_tau', 'sigma_min', 'sigma_max', 'rho', 'shift', 'shift_t0',
             'zero_terminal_snr', 'prediction', 'sigma_data')
_NETWORK = ('name', 'n_feat', 'channel_mult', 'blocks', 'attention', 'head_dim', 'self_cond',
            'patch')
_LOSS = ('loss_weighting', 'loss_norm', 'min_snr_gamma', 'sigmoid_bias', 'importance',
         'cond_drop_rate')

# What the weights' output means: drawing from them, evaluating them, fine-tuning their refiner.
# (model.dtype and model.dropout change how the network runs, not what it computes.)
DRAWING = (tuple(f'diffusion.{k}' for k in _SCHEDULE) + tuple(f'model.{k}' for k in _NETWORK)
           + ('data.image_size',))
# Resuming adds the loss, which defines what the network learns: steps trained under another one
# would be recorded as this one's. (How it is optimized, train.*, may change on a resume.)
TRAINING = DRAWING + tuple(f'diffusion.{k}' for k in _LOSS) + ('model.dropout',)


def _plain(value):
  """JSON's view of a value (tuples as lists), so a recorded value and a config's compare."""
  return json.loads(json.dumps(value))


def _flag(key: str, value) -> str:
  shown = '(' + ''.join(f'{v},' for v in value) + ')' if isinstance(value, list) else value
  return f'--config.{key}={shown}'


def check(config, workdir: str, keys: tuple[str, ...], doing: str) -> None:
  """Raise ValueError naming each of `keys` whose value differs from the one recorded in
  `workdir`'s config.json (a key it does not record, from an older version, is not compared)."""
  recorded = files.read_record(os.path.join(workdir, 'config.json'))
  differ = []
  for key in keys:
    section, name = key.split('.')
    if name not in recorded.get(section, {}):
      continue
    was, now = _plain(recorded[section][name]), _plain(config[section][name])
    if was != now:
      differ.append((key, was, now))
  _check_null_context(config, workdir, recorded)
  if differ:
    asked = ', '.join(f'{k}={now}' for k, _, now in differ)
    trained = ', '.join(f'{k}={was}' for k, was, _ in differ)
    fix = ' '.join(_flag(k, was) for k, was, _ in differ)
    raise ValueError(
        f'{workdir} was trained with {trained} (its config.json), but this run asks for {asked}: '
        f'{doing} would treat its weights as something they are not. Pass {fix}, or use another '
        '--workdir. Nothing in the workdir was changed.')


def _check_null_context(config, workdir: str, recorded: dict) -> None:
  """Classifier-free guidance reads the null context, which diffusion.cond_drop_rate = 0 never
  trained: the record decides, since a drawing command rarely repeats the training's settings."""
  rate = recorded.get('diffusion', {}).get('cond_drop_rate')
  if rate == 0 and config.sample.guidance:
    raise ValueError(
        f'{workdir} was trained with diffusion.cond_drop_rate=0 (its config.json), so its null '
        f'context never trained and sample.guidance={config.sample.guidance} would read noise: '
        'pass --config.sample.guidance=0 (autoguidance, sample.autoguidance, needs no null '
        'context). Nothing in the workdir was changed.')
