"""Low-rank factors: every image, per channel, is `A (h x r) @ B (r x w)`.

The low-rank plugin: storing the two factors costs `c * r * (h + w)` floats
per image instead of `c * h * w`, so at the same storage far more images fit
(rank 2 on 32x32: 8x as many). Composes with any matching objective (LoDC,
LoDSA, LoDM, LoMTT).

References:
  Yang, Shen, Wang, Liu & Guo, "An Efficient Dataset Condensation Plugin and
  Its Application to Continual Learning", NeurIPS 2023.
"""

import operator

import jax
import jax.numpy as jnp

from lowrank_distill.parameterize import pixels

# 'real' and 'svd' are synonyms: the truncated SVD of real images.
METHODS = ("noise", "real", "svd")


def check_rank(rank, image_shape) -> int:
  """Raises ValueError unless 1 <= rank <= min(h, w); returns int(rank)."""
  h, w = image_shape[0], image_shape[1]
  try:
    value = None if isinstance(rank, bool) else operator.index(rank)
  except TypeError:
    value = None
  if value is None or not 1 <= value <= min(h, w):
    raise ValueError(
      f"rank must be an integer in [1, {min(h, w)}] (1..min(h, w)) for "
      f"images of {h}x{w}; got {rank!r}"
    )
  return value


def svd_factors(images, *, rank: int) -> dict:
  """Best rank-`rank` factors of every channel of every image.

  Args:
    images: [n, h, w, c].
    rank: r <= min(h, w).

  Returns:
    {'a': [n, c, h, r], 'b': [n, c, r, w]} with `a = U_r sqrt(S_r)` and
    `b = sqrt(S_r) V_r^T`, so `a @ b` is the truncated SVD (Eckart-Young);
    at r = min(h, w) it is the image itself.
  """
  x = jnp.transpose(jnp.asarray(images, jnp.float32), (0, 3, 1, 2))
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
  root = jnp.sqrt(s[..., :rank])
  a = u[..., :rank] * root[..., None, :]
  b = root[..., :, None] * vt[..., :rank, :]
  return {"a": a, "b": b}


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
  rank: int,
) -> dict:
  """Initial factors.

  Args:
    key: a `jax.random.key` (used by 'noise').
    num_classes: classes in the set.
    images_per_class: images per class.
    image_shape: (h, w, c).
    method: 'noise' or 'real' / 'svd'. Noise draws both factors i.i.d.
      `N(0, 1 / sqrt(r))` (std `r ** -0.25`), so every pixel of `a @ b`, a
      sum of r products, has variance `r * (r ** -0.5) ** 2 = 1`, the scale
      of standardised data, with the two factors balanced. 'real' takes the
      truncated SVD of `real_images` (see `svd_factors`).
    real_images: [num_classes, images_per_class, h, w, c] for 'real'.
    rank: r, 1 <= r <= min(h, w).

  Returns:
    {'a': [n, c, h, r], 'b': [n, c, r, w]} float32, n = num_classes *
    images_per_class (class-major).

  References:
    Yang et al., NeurIPS 2023 (noise init; the SVD init is ours).
  """
  pixels.check_method(method, METHODS)
  h, w, c = pixels.check_sizes(
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
  )
  rank = check_rank(rank, (h, w, c))
  n = num_classes * images_per_class
  if method in ("real", "svd"):
    images = pixels.real_batch(
      real_images,
      num_classes=num_classes,
      images_per_class=images_per_class,
      image_shape=(h, w, c),
    )
    return svd_factors(images, rank=rank)
  key_a, key_b = jax.random.split(key)
  std = rank**-0.25
  return {
    "a": std * jax.random.normal(key_a, (n, c, h, rank), jnp.float32),
    "b": std * jax.random.normal(key_b, (n, c, rank, w), jnp.float32),
  }


def materialize(params: dict) -> jax.Array:
  """Images from factors.

  Args:
    params: {'a': [n, c, h, r], 'b': [n, c, r, w]}.

  Returns:
    [n, h, w, c], `images[i, ..., ch] = a[i, ch] @ b[i, ch]`.
  """
  # Full float32 products: the cost is negligible next to any network, and
  # TF32/bf16 passes would blur a full-rank SVD init.
  return jnp.einsum(
    "nchr,ncrw->nhwc", params["a"], params["b"], precision="highest"
  )
