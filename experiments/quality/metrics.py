"""Sample-quality and memorization metrics as pure functions of arrays (jnp, jit-able).

Everything pairwise runs in row blocks (`lax.map`), so 10k x 10k comparisons never hold
a full distance matrix: memory is block x keys, whatever the sample count.
Features are float [N, D]; sprites for the pixel metrics are uint8 [N, S, S, 3].
"""
import functools

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # GPUs default to TF32 for float32 matmuls: 10-bit mantissas


def map_row_blocks(fn, rows: jax.Array, block: int):
  """fn applied to row blocks of `rows` (zero-padded to a multiple of block), results re-joined."""
  n = rows.shape[0]
  block = max(min(block, n), 1)
  padded = jnp.pad(rows, ((0, -n % block),) + ((0, 0),) * (rows.ndim - 1))
  out = jax.lax.map(fn, padded.reshape(-1, block, *rows.shape[1:]))
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:n], out)


def _sq_dist(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distances [A, B] via the matmul identity, clipped at 0 (rounding)."""
  aa, bb = jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)
  return jnp.maximum(aa[:, None] + bb[None] - 2 * jnp.dot(a, b.T, precision=HIGHEST), 0.0)


# -- Frechet distance and KID --------------------------------------------------------------

@jax.jit
def mean_cov(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean [D] and unbiased covariance [D, D]; centered first so float32 keeps its precision."""
  x = x.astype(jnp.float32)
  mu = jnp.mean(x, axis=0)
  c = x - mu
  return mu, jnp.dot(c.T, c, precision=HIGHEST) / max(x.shape[0] - 1, 1)


def _psd_sqrt(m: jax.Array) -> jax.Array:
  w, v = jnp.linalg.eigh((m + m.T) / 2)
  return (v * jnp.sqrt(jnp.maximum(w, 0.0))) @ v.T


@jax.jit
def frechet_distance(mu1, cov1, mu2, cov2) -> jax.Array:
  """|mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2), the FID formula.

  Tr (C1 C2)^1/2 = Tr (C1^1/2 C2 C1^1/2)^1/2, whose argument is symmetric PSD: two `eigh`
  calls instead of a general `sqrtm`, so it runs on any backend and stays real.
  """
  s1 = _psd_sqrt(cov1)
  w = jnp.linalg.eigvalsh(s1 @ cov2 @ s1)
  tr_sqrt = jnp.sum(jnp.sqrt(jnp.maximum(w, 0.0)))
  return jnp.sum((mu1 - mu2) ** 2) + jnp.trace(cov1) + jnp.trace(cov2) - 2 * tr_sqrt


def fid(x: jax.Array, y: jax.Array) -> jax.Array:
  """Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
  return frechet_distance(*mean_cov(x), *mean_cov(y))


def _kernel_sum(a: jax.Array, b: jax.Array, block: int) -> jax.Array:
  """sum_ij k(a_i, b_j) for the KID kernel k(x, y) = (x.y / D + 1)^3, in row blocks of a."""
  d = a.shape[1]
  return jnp.sum(map_row_blocks(
      lambda blk: jnp.sum((jnp.dot(blk, b.T, precision=HIGHEST) / d + 1) ** 3, axis=1), a, block))


@functools.partial(jax.jit, static_argnames='block')
def kid(x: jax.Array, y: jax.Array, block: int = 1024) -> jax.Array:
  """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018), all pairs used.

  The within-set sums leave out the diagonal (i = j), which is what makes it unbiased: its
  expectation is the population MMD^2 at any sample count, 0 when both sets share a law.
  """
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n, m, d = x.shape[0], y.shape[0], x.shape[1]

  def diag(a):
    return jnp.sum((jnp.sum(a * a, axis=1) / d + 1) ** 3)

  kxx = _kernel_sum(x, x, block) - diag(x)
  kyy = _kernel_sum(y, y, block) - diag(y)
  kxy = _kernel_sum(x, y, block)
  return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)


# -- precision and recall (Kynkaanniemi et al. 2019) -----------------------------------------

@functools.partial(jax.jit, static_argnames=('k', 'block'))
def knn_radii(x: jax.Array, k: int = 3, block: int = 1024) -> jax.Array:
  """Distance from each row of x to its k-th nearest other row: the radius of its k-NN ball."""
  x = x.astype(jnp.float32)
  # k + 1 smallest, since each point is its own nearest neighbor at distance 0.
  neg, _ = map_row_blocks(lambda blk: jax.lax.top_k(-_sq_dist(blk, x), k + 1), x, block)
  return jnp.sqrt(-neg[:, k])


@functools.partial(jax.jit, static_argnames='block')
def coverage_by_balls(queries, centers, radii, block: int = 1024) -> jax.Array:
  """Share of queries inside at least one ball (centre_j, radius_j): the estimated manifold."""
  queries, centers = queries.astype(jnp.float32), centers.astype(jnp.float32)
  inside = map_row_blocks(
      lambda blk: jnp.any(_sq_dist(blk, centers) <= radii[None] ** 2, axis=1), queries, block)
  return jnp.mean(inside.astype(jnp.float32))


def precision_recall(real, fake, k: int = 3, block: int = 1024) -> tuple[jax.Array, jax.Array]:
  """Precision: share of fake inside the real k-NN manifold (fidelity). Recall: share of real
  inside the fake manifold (diversity). Same-size sets make the two comparable."""
  precision = coverage_by_balls(fake, real, knn_radii(real, k, block), block)
  recall = coverage_by_balls(real, fake, knn_radii(fake, k, block), block)
  return precision, recall


# -- nearest neighbors and copies -----------------------------------------------------------

@functools.partial(jax.jit, static_argnames='block')
def nearest_l2(queries, keys, block: int = 1024) -> tuple[jax.Array, jax.Array]:
  """(index [Q], Euclidean distance [Q]) of each query's nearest key: the feature-space audit."""
  queries, keys = queries.astype(jnp.float32), keys.astype(jnp.float32)

  def fn(blk):
    d = _sq_dist(blk, keys)
    return jnp.argmin(d, axis=1), jnp.sqrt(jnp.min(d, axis=1))
  return map_row_blocks(fn, queries, block)


@functools.partial(jax.jit, static_argnames=('block', 'candidates'))
def nearest_mad(queries, keys, block: int = 256, candidates: int = 64):
  """(index [Q], mean absolute difference [Q]) of each query sprite's nearest key sprite.

  Pixel distance is the mean |a - b| over all S*S*3 channel values in [0, 255] units: 0 is a
  pixel-identical copy, 1 is one pixel repainted black-for-white. L1 has no matmul shortcut,
  so the `candidates` nearest keys in Euclidean distance (one matmul) are found first and
  their L1 distances summed exactly in int32. A copy is always among them (0 in both); on emoji
  this found the true L1 nearest for 99% of held-out sprites, and for all of those within 5.
  """
  q = queries.reshape(queries.shape[0], -1).astype(jnp.int32)
  kv = keys.reshape(keys.shape[0], -1).astype(jnp.int32)
  kf = kv.astype(jnp.float32)
  c = min(candidates, kv.shape[0])

  def fn(blk):
    _, cand = jax.lax.top_k(-_sq_dist(blk.astype(jnp.float32), kf), c)
    l1 = jnp.sum(jnp.abs(blk[:, None, :] - kv[cand]), axis=2)
    best = jnp.argmin(l1, axis=1)
    return jnp.take_along_axis(cand, best[:, None], 1)[:, 0], jnp.min(l1, axis=1)

  idx, total = map_row_blocks(fn, q, block)
  return idx, total.astype(jnp.float32) / q.shape[1]


def with_mirrors(images: jax.Array) -> jax.Array:
  """images [N, S, S, C] then their horizontal flips: index i + N is image i mirrored."""
  return jnp.concatenate([images, images[:, :, ::-1]], axis=0)


def copy_rates(distances: jax.Array, near_threshold: float) -> dict[str, jax.Array]:
  """Exact copies (pixel distance 0) and near copies (at most the threshold, copies included)."""
  return {'exact': jnp.mean((distances == 0).astype(jnp.float32)),
          'near': jnp.mean((distances <= near_threshold).astype(jnp.float32))}
