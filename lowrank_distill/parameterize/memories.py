"""Addressable memories: bases shared by every class, addressed per image.

RememberThePast: `K` basis images shared by all classes and a learned
address (a row of `K` coefficients) per synthetic image; image `i` is
`sum_k coefficients[i, k] * basis[k]`. Storage: `K * h * w * c` for the
bases plus `K` floats per image, so at the storage of a few images per
class a set holds many images (all in the span of the bases). Labels are
the library's (hard, or learned soft labels).

`lowrank_memories` stores every basis as the low-rank plugin's factors
(LoRememberThePast).

References:
  Deng & Russakovsky, "Remember the Past: Distilling Datasets into
  Addressable Memories for Neural Networks", NeurIPS 2022 (the reference
  code also stores bases at a lower resolution; not done here); Yang et
  al., "An Efficient Dataset Condensation Plugin and Its Application to
  Continual Learning", NeurIPS 2023 (LoRememberThePast, Table 4).
"""

import jax
import jax.numpy as jnp

from lowrank_distill import checks
from lowrank_distill.parameterize import pixels

# 'real' and 'svd' are synonyms: bases from the SVD of real images.
METHODS = ("noise", "real", "svd")


def check_num_bases(num_bases) -> int:
  """Raises ValueError unless num_bases is an integer >= 1."""
  return checks.positive_int("synset.num_bases", num_bases)


def svd_memories(images, *, num_bases: int, key) -> dict:
  """Bases spanning the images, and each image's address on them.

  The first `k = min(K, n, h*w*c)` bases are the top right singular vectors
  of the images flattened to rows (scaled by their singular values' square
  root), the addresses the matching left singular vectors (scaled the same
  way), so `addresses @ bases` is the best rank-k approximation of the set
  and, at K >= n, the set itself. Bases beyond that are random directions
  (from `key`) orthogonal to those k, scaled to their mean norm, with zero
  addresses: the images do not change, and every address still gets a
  gradient (`<dL/dx_i, basis_j>`).

  Args:
    images: [n, h, w, c].
    num_bases: K.
    key: a `jax.random.key` for the spare bases.

  Returns:
    {'bases': [K, h, w, c], 'addresses': [n, K]} float32.
  """
  x = jnp.asarray(images, jnp.float32)
  n, shape = x.shape[0], x.shape[1:]
  flat = x.reshape(n, -1)
  u, s, vt = jnp.linalg.svd(flat, full_matrices=False)
  k = min(num_bases, n, flat.shape[1])
  root = jnp.sqrt(s[:k])
  bases = root[:, None] * vt[:k]
  addresses = u[:, :k] * root[None, :]
  extra = num_bases - k
  if extra:
    spare = jax.random.normal(key, (extra, flat.shape[1]), jnp.float32)
    spare = spare - (spare @ vt[:k].T) @ vt[:k]
    spare = spare / jnp.linalg.norm(spare, axis=1, keepdims=True)
    bases = jnp.concatenate([bases, jnp.mean(root) * spare])
    addresses = jnp.concatenate([addresses, jnp.zeros((n, extra))], axis=1)
  return {
    "bases": bases.reshape(num_bases, *shape),
    "addresses": addresses.astype(jnp.float32),
  }


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
  num_bases: int,
) -> dict:
  """Initial bases and addresses.

  Args:
    key: a `jax.random.key` (the draws of 'noise', spare bases of 'real').
    num_classes: classes in the set.
    images_per_class: images per class.
    image_shape: (h, w, c).
    method: 'noise': bases N(0, 1) and addresses N(0, 1 / K), so every
      pixel has variance 1, the scale of standardised data (the reference
      draws both Xavier-uniform); 'real' / 'svd': `svd_memories` of
      `real_images`.
    real_images: [num_classes, images_per_class, h, w, c] for 'real'.
    num_bases: K >= 1.

  Returns:
    {'bases': [K, h, w, c], 'addresses': [n, K]} float32, n =
    num_classes * images_per_class (class-major).
  """
  pixels.check_method(method, METHODS)
  shape = pixels.check_sizes(
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
  )
  num_bases = check_num_bases(num_bases)
  n = num_classes * images_per_class
  if method in ("real", "svd"):
    images = pixels.real_batch(
      real_images,
      num_classes=num_classes,
      images_per_class=images_per_class,
      image_shape=shape,
    )
    return svd_memories(images, num_bases=num_bases, key=key)
  key_bases, key_addresses = jax.random.split(key)
  return {
    "bases": jax.random.normal(key_bases, (num_bases, *shape), jnp.float32),
    "addresses": num_bases**-0.5
    * jax.random.normal(key_addresses, (n, num_bases), jnp.float32),
  }


def combine(addresses, bases) -> jax.Array:
  """[n, K] addresses of [K, h, w, c] bases -> [n, h, w, c] images."""
  return jnp.einsum("nk,khwc->nhwc", addresses, bases, precision="highest")


def bases(params: dict) -> jax.Array:
  """[K, h, w, c] basis images."""
  return params["bases"]


def materialize(params: dict) -> jax.Array:
  """Images from bases and addresses.

  Args:
    params: {'bases': [K, h, w, c], 'addresses': [n, K]}.

  Returns:
    [n, h, w, c], `images[i] = sum_k addresses[i, k] * bases[k]`.
  """
  return combine(params["addresses"], params["bases"])
