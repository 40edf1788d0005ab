"""Samples against real sprites, beside the floor: the same metric between two halves of real ones.

Each metric is computed between h samples and one half of the reference split, and between the
other half and that same half (real against real at the same set size), so a ratio of 1 reads
"as far from real sprites as real sprites are". The halves are split by sprite group, so
variants of one sprite never sit on both sides.
"""
import numpy as np

from experiments.quality import features, metrics

# FID's bias grows like feature_dim / set size; below ~10 samples per dimension it dominates
# the value and moves with the set size, so such FIDs only mean something as ratios.
STABLE_FID_SET = 10 * features.FEATURE_DIM


def group_halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of two halves of a split with no sprite group in both (variants stay together)."""
  rng = np.random.default_rng(seed)
  unique = rng.permutation(np.unique(groups))
  counts = np.array([np.sum(groups == g) for g in unique])
  first = unique[np.cumsum(counts) <= len(groups) / 2]
  in_first = np.isin(groups, first)
  return rng.permutation(np.flatnonzero(in_first)), rng.permutation(np.flatnonzero(~in_first))


def halves_of(ref_groups: np.ndarray, repeats: int, seed: int) -> list[tuple]:
  """The reference's halves for each repeat (group_halves, one seed each)."""
  return [group_halves(ref_groups, seed + r) for r in range(repeats)]


def set_size(halves: list[tuple], n: int) -> int:
  """h: the size of every set compared, the samples (n of them) and each half of the reference."""
  return min([n] + [min(len(a), len(b)) for a, b in halves])


def _set_metrics(fake, real, k: int, block: int) -> dict[str, float]:
  precision, recall = metrics.precision_recall(real, fake, k, block)
  return {'fid': float(metrics.fid(fake, real)), 'kid': float(metrics.kid(fake, real, block)),
          'precision': float(precision), 'recall': float(recall)}


def distribution_metrics(sample_f, ref_f, ref_groups, *, knn: int, repeats: int, seed: int,
                         block: int) -> dict:
  """Each metric for samples vs one half of the reference, and for the other half vs it (the
  floor), all sets of one size h; repeated over redrawn halves (and further samples), averaged."""
  n, k = len(sample_f), knn
  halves = halves_of(ref_groups, repeats, seed)
  h = set_size(halves, n)
  if h <= k + 1:
    raise ValueError(f'Sets of {h} sprites are too few for k-NN precision/recall with '
                     f'eval.knn={k}: draw more samples or use a larger reference split.')
  order = np.random.default_rng(seed).permutation(n)  # samples come sorted by class
  runs = {'samples': [], 'floor': []}
  for r, (first, second) in enumerate(halves):
    real_b = ref_f[second[:h]]
    fake = sample_f[order[np.arange(r * h, (r + 1) * h) % n]]  # disjoint while samples last
    runs['samples'].append(_set_metrics(fake, real_b, k, block))
    runs['floor'].append(_set_metrics(ref_f[first[:h]], real_b, k, block))
  out = {'set_size': h, 'repeats': len(halves)}
  for name in ('fid', 'kid', 'precision', 'recall'):
    s, f = (np.array([m[name] for m in runs[who]]) for who in ('samples', 'floor'))
    out[name] = {'samples': float(s.mean()), 'samples_std': float(s.std()),
                 'floor': float(f.mean()), 'floor_std': float(f.std()),
                 'ratio': float(s.mean() / f.mean()) if f.mean() > 0 else None}
  # KID is unbiased, so its floor is 0 up to noise and a ratio to it means nothing: read the
  # samples' KID against the floor's spread instead.
  out['kid']['ratio'] = None
  out['fid']['stable'] = h >= STABLE_FID_SET
  return out


def conditional_accuracy(predicted, labels, ref_predicted, ref_labels) -> dict:
  asked = labels >= 0
  real = ref_labels >= 0
  return {'samples': float(np.mean(predicted[asked] == labels[asked])) if asked.any() else None,
          'real_heldout': float(np.mean(ref_predicted[real] == ref_labels[real]))
                          if real.any() else None}
