"""The one-screen summary printed after every evaluation, and the caveats it ends with."""
from experiments.quality import floor, grain


def caveats(report: dict) -> list[str]:
  out = []
  h = report['set_size']
  if not report['fid']['stable']:
    out.append(f'FID from sets of {h} sprites (< {floor.STABLE_FID_SET} = 10 per feature dimension) is '
               'dominated by small-sample bias: read its ratio to the floor, and KID.')
  colors = report.get('colors')
  if colors and colors['background_share'] < 0.5:
    out.append(f"Color use takes {tuple(colors['background'])} for the background, but only "
               f"{100 * colors['background_share']:.0f}% of the training sprites' corners have it: "
               'the set has no one background color, so read the color lines loosely.')
  if report['reference']['split'] == 'train':
    out.append('The reference is the training split, which the feature network was trained on and '
               'a copying model reproduces: a ratio near 1 does not rule out memorization.')
  return out


# Below this held-out accuracy the feature network's class calls are too unreliable to say
# whether a sample reads as the class it was asked for.
TRUSTED_ACCURACY = 0.7
RECALL_SLACK = 0.05  # recall this close to the floor counts as "as varied as real sprites"
FLAT_GRAIN = 1.15  # grain up to this multiple of real sprites' counts as "fills as smooth as real"
# Pixels apart from every neighbor (grain.APART) up to this multiple of real sprites' share: no
# more specks than real. The cpu preset's emoji and OpenMoji stood at 0.99-1.11 times real,
# DawnLike's (whose confetti the eye sees) at 1.49-1.69 (docs/yardstick.md: which steps make
# the grain).
SPECKS = 1.25
# A top-3 share up to this multiple of real sprites' counts as "colors as spread as real". Models
# trained with l2 (the cpu preset's, Muon's) stood at 0.99-1.14 times real; l1 ones, whose sprites
# the eye sees in a few browns (DawnLike) or paler, flatter shades (emoji), at 1.23-1.45 (README).
SPREAD_COLORS = 1.15


def _closeness(ratio) -> str:
  if ratio is None:
    return 'no floor to compare with'
  if ratio <= 1.2:
    return 'as close to the held-out sprites as real sprites are'
  return 'near real sprites' if ratio <= 1.5 else 'clearly off real sprites'


def _class_words(acc: dict, net_accuracy) -> str | None:
  if net_accuracy is None or acc['samples'] is None:
    return None
  if net_accuracy < TRUSTED_ACCURACY:
    return (f'class: the feature network names only {100 * net_accuracy:.0f}% of real held-out '
            'sprites right, too few to say whether samples read as their class')
  return (f"class: {100 * acc['samples']:.0f}% of samples read as the class asked for, real "
          f"held-out sprites {100 * acc['real_heldout']:.0f}%")


def _shares(g: dict, key: str):
  """(samples, real) of one of grain.pixel_shares, or None where either is missing or real's 0."""
  pair = g.get(key) or {}
  mine, real = pair.get('samples'), pair.get('real_heldout')
  return (mine, real) if mine is not None and real else None


def _grain_words(g: dict | None) -> str | None:
  if not g or g['ratio'] is None:
    return None
  if g['ratio'] <= FLAT_GRAIN:
    words = 'fills as smooth as real ones'
    flat = _shares(g, 'flat')
    if flat and flat[0] < 0.5 * flat[1]:  # a wobble of a few levels: unseen, but not pixel art's
      words += (f', but not exactly flat ({100 * flat[0]:.0f}% of pixels equal a neighbor, real '
                f'sprites {100 * flat[1]:.0f}%)')
  else:
    words = f"{g['ratio']:.1f}x as grainy (speckled, blotchy fills)"
  apart = _shares(g, 'apart')
  if apart and apart[0] > SPECKS * apart[1]:
    words += (f', {100 * apart[0]:.0f}% of pixels apart from every neighbor (real sprites '
              f'{100 * apart[1]:.0f}%)' + (': specks' if g['ratio'] <= FLAT_GRAIN else ''))
  return f"grain {g['samples']:.3f} vs {g['real_heldout']:.3f} for real sprites: " + words


# Shares of samples nearer the training set than 95% of held-out sprites are (5% = as new as
# real). The one H100 run stood at 7-10%, its first sign of leaning; the cpu preset trained for
# 736 passes over 174 sprites stood at 96%, drawing them back almost pixel for pixel, with FID
# near the floor and near copies (mean pixel difference <= 2) at only 2%.
LEANING, REPRODUCING = 0.1, 0.3


def _color_words(c: dict | None) -> str | None:
  if not c or c['top_share']['samples'] is None or not c['top_share']['real_heldout']:
    return None
  mine, real = c['top_share']['samples'], c['top_share']['real_heldout']
  return (f"colors: {100 * mine:.0f}% of pixels (background aside) in the samples' {c['top']} "
          f"commonest colors, real sprites {100 * real:.0f}%: "
          + ('as spread as real ones, or more' if mine <= SPREAD_COLORS * real
             else 'fewer colors carry them than carry real sprites'))


def _novelty_words(mem: dict) -> str | None:
  shares = [mem.get(f'{space}_closer_than_heldout_p5') for space in ('pixel', 'feature')]
  if any(share is None for share in shares):
    return None
  near = max(shares)
  head = (f'{100 * near:.0f}% of samples nearer a training sprite than 95% of held-out sprites '
          'are (5% = as new as real): ')
  if near > REPRODUCING:
    return head + ('the model is drawing its training sprites back; train for fewer passes '
                   '(train.max_epochs) or on more sprites')
  return head + ('leaning towards the training set' if near > LEANING else 'as new as real sprites')


def verdict(report: dict) -> list[str]:
  """The report in words, each sentence only as strong as its numbers allow."""
  fid, recall, mem = report['fid'], report['recall'], report['memorization']
  varied = recall['floor'] - recall['samples'] <= RECALL_SLACK
  out = [f"FID {fid['ratio'] or float('nan'):.2f}x the real-vs-real floor: {_closeness(fid['ratio'])}",
         f"recall {recall['samples']:.2f} vs {recall['floor']:.2f} for real sprites: "
         + ('as varied as real sprites' if varied else 'less varied than real sprites'),
         _class_words(report['conditional_accuracy'], report['feature_net']['test_accuracy']),
         _grain_words(report.get('grain')),
         _color_words(report.get('colors')),
         f"copies: {100 * mem['samples']['exact_copy_rate']:.1f}% exact, "
         f"{100 * mem['samples']['near_copy_rate']:.1f}% near (held-out real sprites: "
         f"{100 * mem['real_heldout']['near_copy_rate']:.1f}% near)",
         _novelty_words(mem)]
  return [line for line in out if line]


def _pct(x) -> str:
  return '   n/a' if x is None else f'{100 * x:5.1f}%'


def _pixel_lines(r: dict) -> list[str]:
  """The summary's lines of what is measured in pixels: grain and its kind, then color use."""
  lines = []
  g = r.get('grain')
  if g and g['samples'] is not None and g['real_heldout'] is not None:
    lines.append(f"{'grain (noise / edges)':22}{g['samples']:10.4f}{'':8}{g['real_heldout']:12.4f}"
                 f"{'':8}{g['ratio'] or float('nan'):8.2f}  (real held-out sprites)")
    for key, label in (('flat', '  equal to a neighbor'),
                       ('apart', f'  apart from all, {grain.APART}+')):
      pair = _shares(g, key)
      if pair:
        lines.append(f"{label:22}{_pct(pair[0]):>10}{'':8}{_pct(pair[1]):>12}{'':8}"
                     f"{pair[0] / pair[1]:8.2f}  (pixels, real held-out sprites)")
  c = r.get('colors')
  if c and c['distance']['samples'] is not None:
    d, d_real = c['distance']['samples'], c['distance']['real_train']
    t, t_real = c['top_share']['samples'], c['top_share']['real_heldout']
    times = lambda a, b: f"{a / b:8.2f}" if b else " " * 8
    lines += [f"{'color mix distance':22}{d:10.4f}{'':8}{d_real:12.4f}{'':8}{times(d, d_real)}"
              '  (training sprites, as many)',
              f"{'pixels in top %d colors' % c['top']:22}{_pct(t):>10}{'':8}{_pct(t_real):>12}"
              f"{'':8}{times(t, t_real)}  (real held-out sprites)"]
  return lines


def summary(r: dict) -> str:
  """The one-screen report printed after every evaluation."""
  net, mem = r['feature_net'], r['memorization']
  step = f" (step {r['step']})" if r['step'] is not None else ''  # None: a samples file's
  lines = [f"eval of {r['samples']['name']}{step}: {r['samples']['count']} samples vs "
           f"the {r['reference']['split']} split ({r['reference']['count']} sprites); sets of "
           f"{r['set_size']}, {r['repeats']} repeat(s)",
           f"feature net v{net['version']} ({net['task']}, {net['steps']} steps): held-out "
           f"accuracy {_pct(net['test_accuracy'])}, train {_pct(net['train_accuracy'])}",
           f"{'':22}{'samples':>18}{'floor (real/real)':>20}{'ratio':>8}"]
  for name in ('fid', 'kid', 'precision', 'recall'):
    m = r[name]
    ratio = '' if m['ratio'] is None else f"{m['ratio']:8.2f}"
    lines.append(f"{name.upper() if len(name) == 3 else name:22}"
                 f"{m['samples']:10.4f} ± {m['samples_std']:<6.4f}"
                 f"{m['floor']:12.4f} ± {m['floor_std']:<6.4f}{ratio}")
  acc = r['conditional_accuracy']
  lines.append(f"{'conditional accuracy':22}{_pct(acc['samples']):>10}{'':8}"
               f"{_pct(acc['real_heldout']):>12}  (real held-out sprites)")
  lines += _pixel_lines(r)
  s, h = mem['samples'], mem['real_heldout']
  lines += [f"nearest training sprite (mirrors included){'samples':>14}{'held-out real':>16}",
            f"{'  exact copies':42}{_pct(s['exact_copy_rate']):>14}"
            f"{_pct(h['exact_copy_rate']):>16}",
            f"{'  near copies (pixel dist <= %g)' % mem['near_copy_threshold']:42}"
            f"{_pct(s['near_copy_rate']):>14}{_pct(h['near_copy_rate']):>16}"]
  for space in ('pixel', 'feature'):
    a, b = s[f'{space}_distance'], h[f'{space}_distance']
    lines.append(f"{'  %s distance p5 / p50' % space:42}{a['p5']:7.2f} /{a['p50']:6.2f}"
                 f"{b['p5']:9.2f} /{b['p50']:6.2f}")
  lines.append(f"  closer than 95% of held-out sprites: pixel "
               f"{_pct(mem['pixel_closer_than_heldout_p5'])}, feature "
               f"{_pct(mem['feature_closer_than_heldout_p5'])} (5% = as new as real)")
  sec = r['seconds']
  lines.append(f"cost {sec['total']:.1f} s: data {sec['data']:.1f}, sampling {sec['sampling']:.1f}, "
               f"feature net {sec['feature_net']:.1f}, metrics {sec['metrics']:.1f}")
  lines += ['in words: ' + '; '.join(verdict(r)) + '.']
  return '\n'.join(lines + [f'warning: {w}' for w in r['warnings']])
