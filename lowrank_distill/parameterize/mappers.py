"""Shared dimension mappers: low-rank space sampling (MTT-LSS).

`k` mapper sets each hold, per channel, `U (h x r)` and `V (r x w)` (stored
already transposed). Every image is a small per-image, per-channel code
`S (r x r)` mapped through its set: `x[..., ch] = U[s, ch] @ S[ch] @ V[s, ch]`.
Image `i` (class-major, label `i // images_per_class`) uses set `i % k`, so
the classes spread evenly over the sets. Storage: `k * c * r * (h + w)` for
the mappers plus `c * r * r` per image.

References:
  Kong, Zhou, He, Tu & Ding, "Efficient Dataset Distillation through
  Low-Rank Space Sampling", arXiv:2503.07998, 2025.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill.parameterize import factors, pixels

# 'real' and 'svd' are synonyms: subspaces from the SVD of real images.
METHODS = ("noise", "real", "svd")


def check_num_sets(num_sets) -> int:
  """Raises ValueError unless num_sets is an integer >= 1."""
  try:
    value = None if isinstance(num_sets, bool) else operator.index(num_sets)
  except TypeError:
    value = None
  if value is None or value < 1:
    raise ValueError(f"num_sets must be an integer >= 1, got {num_sets!r}")
  return value


def set_of(n: int, num_sets: int) -> np.ndarray:
  """[n] int: the mapper set of each image, `i % num_sets`."""
  return np.arange(n) % num_sets


def svd_mappers(images, *, rank: int, num_sets: int) -> dict:
  """Mappers spanning each set's images, and the codes projecting onto them.

  For set `s` and channel `ch`, with `X_j` the set's images: `u` is the top-r
  left singular vectors of `[X_1, X_2, ...]` side by side (`[h, n_s * w]`),
  `v` the top-r right singular vectors, as rows, of the images stacked
  vertically (`[n_s * h, w]`), and each code is the projection
  `u^T X_j v^T`. At r = h = w both mappers are square orthogonal matrices
  and the codes rebuild the images exactly.

  Args:
    images: [n, h, w, c], n >= num_sets.
    rank: r <= min(h, w).
    num_sets: k.

  Returns:
    {'u': [k, c, h, r], 'v': [k, c, r, w], 'codes': [n, c, r, r]}.
  """
  x = jnp.transpose(jnp.asarray(images, jnp.float32), (0, 3, 1, 2))
  n, c, h, w = x.shape
  sets = set_of(n, num_sets)
  us, vs = [], []
  codes = jnp.zeros((n, c, rank, rank), jnp.float32)
  for s in range(num_sets):
    idx = np.flatnonzero(sets == s)
    xs = x[idx]  # [n_s, c, h, w]
    side = jnp.transpose(xs, (1, 2, 0, 3)).reshape(c, h, len(idx) * w)
    stacked = jnp.transpose(xs, (1, 0, 2, 3)).reshape(c, len(idx) * h, w)
    u = jnp.linalg.svd(side, full_matrices=False)[0][..., :rank]
    v = jnp.linalg.svd(stacked, full_matrices=False)[2][..., :rank, :]
    code = jnp.einsum("chr,nchw,csw->ncrs", u, xs, v, precision="highest")
    codes = codes.at[idx].set(code)
    us.append(u)
    vs.append(v)
  return {"u": jnp.stack(us), "v": jnp.stack(vs), "codes": codes}


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
  rank: int,
  num_sets: int,
) -> dict:
  """Initial mappers and codes.

  Args:
    key: a `jax.random.key` (used by 'noise').
    num_classes: classes in the set.
    images_per_class: images per class.
    image_shape: (h, w, c).
    method: 'noise' or 'real' / 'svd'. Noise mirrors the structure of the
      SVD init: random orthonormal mappers (columns of `u`, rows of `v`, via
      QR of Gaussian draws) and i.i.d. codes `N(0, h * w / r**2)`, so every
      pixel has expected variance 1 (a pixel sums `r * r` code entries
      weighted by mapper entries of mean square `1 / h` and `1 / w`). 'real'
      takes the subspaces of `real_images` (see `svd_mappers`).
    real_images: [num_classes, images_per_class, h, w, c] for 'real'.
    rank: r, 1 <= r <= min(h, w).
    num_sets: k, 1 <= k <= num_classes * images_per_class.

  Returns:
    {'u': [k, c, h, r], 'v': [k, c, r, w], 'codes': [n, c, r, r]} float32,
    n = num_classes * images_per_class (class-major).

  References:
    Kong et al., arXiv:2503.07998, 2025.
  """
  pixels.check_method(method, METHODS)
  h, w, c = pixels.check_sizes(
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
  )
  rank = factors.check_rank(rank, (h, w, c))
  num_sets = check_num_sets(num_sets)
  n = num_classes * images_per_class
  if num_sets > n:
    raise ValueError(
      f"num_sets ({num_sets}) exceeds the number of images ({n}): every "
      f"mapper set needs at least one image; valid: 1..{n}"
    )
  if method in ("real", "svd"):
    images = pixels.real_batch(
      real_images,
      num_classes=num_classes,
      images_per_class=images_per_class,
      image_shape=(h, w, c),
    )
    return svd_mappers(images, rank=rank, num_sets=num_sets)
  key_u, key_v, key_codes = jax.random.split(key, 3)
  u = jnp.linalg.qr(
    jax.random.normal(key_u, (num_sets, c, h, rank), jnp.float32)
  )[0]
  v = jnp.linalg.qr(
    jax.random.normal(key_v, (num_sets, c, w, rank), jnp.float32)
  )[0]
  std = float(np.sqrt(h * w)) / rank
  codes = std * jax.random.normal(key_codes, (n, c, rank, rank), jnp.float32)
  return {"u": u, "v": jnp.swapaxes(v, -1, -2), "codes": codes}


def _qr_positive(a):
  """Reduced QR with diag(R) >= 0: [..., m, r] -> ([..., m, r], [..., r, r]).

  The signs are fixed so that an orthonormal `a` comes back as itself and
  the columns of `Q` never flip from one call to the next (a flip would
  turn SGD's momentum around).
  """
  q, r = jnp.linalg.qr(a)
  signs = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
  return q * signs[..., None, :], r * signs[..., :, None]


def orthonormalize(params: dict) -> dict:
  """The same images, with orthonormal mappers and the scale in the codes.

  Per set and channel, `u = Q_u R_u` and `v^T = Q_v R_v` (QR, diag(R) >= 0);
  then `u' = Q_u`, `v' = Q_v^T` and each of the set's codes becomes
  `R_u @ code @ R_v^T`, so that `u' @ code' @ v' = u @ code @ v` to float
  rounding. Orthonormal mappers are returned as they are (up to rounding).

  Why (`distill.orthonormal_mappers`, applied after every update): the
  ConvNet's instance norm cannot see an image's scale, so the loss's
  gradient on each of `u`, `v` and the codes is orthogonal to it, and every
  SGD step lengthens them. At MTT's lr_images the mappers' singular values
  grow from 1 to 3-13 within a run and the images leave the real range by
  10-100x (docs/RESULTS.md). Held orthonormal, the mappers only rotate and
  each image's scale lives in its codes, which move as pixels do: with
  orthonormal mappers a code's gradient is the pixel gradient projected
  onto the set's subspace. The hold needs a mapper lr small enough for the
  steps it removes (`distill.lr_mappers`): at lr 100 the triangular factors
  grow every step and the codes blew up (docs/RESULTS.md, session 16).

  Args:
    params: {'u': [k, c, h, r], 'v': [k, c, r, w], 'codes': [n, c, r, r]}.

  Returns:
    The same structure; `u` has orthonormal columns and `v` orthonormal
    rows (per set and channel).
  """
  u, v, codes = params["u"], params["v"], params["codes"]
  q_u, r_u = _qr_positive(u)
  q_v, r_v = _qr_positive(jnp.swapaxes(v, -1, -2))
  sets = set_of(codes.shape[0], u.shape[0])
  codes = jnp.einsum(
    "ncab,ncbd,nced->ncae", r_u[sets], codes, r_v[sets], precision="highest"
  )
  return {"u": q_u, "v": jnp.swapaxes(q_v, -1, -2), "codes": codes}


def materialize(params: dict) -> jax.Array:
  """Images from mappers and codes.

  Args:
    params: {'u': [k, c, h, r], 'v': [k, c, r, w], 'codes': [n, c, r, r]}.

  Returns:
    [n, h, w, c], `images[i, ..., ch] = u[s, ch] @ codes[i, ch] @ v[s, ch]`
    with `s = i % k`.
  """
  u, v, codes = params["u"], params["v"], params["codes"]
  sets = set_of(codes.shape[0], u.shape[0])
  left = jnp.einsum("nchr,ncrs->nchs", u[sets], codes, precision="highest")
  return jnp.einsum("nchs,ncsw->nhwc", left, v[sets], precision="highest")
