"""Addressable memories with low-rank bases (LoRememberThePast).

As `memories`, but every basis channel is stored as rank-r factors
`a (h x r) @ b (r x w)` (the low-rank plugin's `factors`): the bases cost
`K * c * r * (h + w)` floats instead of `K * h * w * c`, and the addresses
`K` per image as before.

References:
  Yang et al., "An Efficient Dataset Condensation Plugin and Its
  Application to Continual Learning", NeurIPS 2023 (Table 4); Deng &
  Russakovsky, NeurIPS 2022 (RememberThePast).
"""

import jax
import jax.numpy as jnp

from lowrank_distill.parameterize import factors, memories, pixels

METHODS = memories.METHODS


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
  num_bases: int,
  rank: int,
) -> dict:
  """Initial low-rank bases and addresses.

  Args:
    key: a `jax.random.key` (used by 'noise').
    num_classes: classes in the set.
    images_per_class: images per class.
    image_shape: (h, w, c).
    method: 'noise': factors drawn as `factors.init` does (every basis
      pixel of variance 1) and addresses N(0, 1 / K); 'real' / 'svd':
      `memories.svd_memories` of `real_images`, every basis then stored as
      its truncated SVD (the addresses those of the full-rank bases).
    real_images: [num_classes, images_per_class, h, w, c] for 'real'.
    num_bases: K >= 1.
    rank: r, 1 <= r <= min(h, w).

  Returns:
    {'a': [K, c, h, r], 'b': [K, c, r, w], 'addresses': [n, K]} float32.
  """
  pixels.check_method(method, METHODS)
  shape = pixels.check_sizes(
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
  )
  rank = factors.check_rank(rank, shape)
  num_bases = memories.check_num_bases(num_bases)
  if method in ("real", "svd"):
    full = memories.init(
      key,
      num_classes=num_classes,
      images_per_class=images_per_class,
      image_shape=shape,
      method=method,
      real_images=real_images,
      num_bases=num_bases,
    )
    return {
      **factors.svd_factors(full["bases"], rank=rank),
      "addresses": full["addresses"],
    }
  key_bases, key_addresses = jax.random.split(key)
  bases = factors.init(
    key_bases,
    num_classes=1,
    images_per_class=num_bases,
    image_shape=shape,
    rank=rank,
  )
  n = num_classes * images_per_class
  return {
    **bases,
    "addresses": num_bases**-0.5
    * jax.random.normal(key_addresses, (n, num_bases), jnp.float32),
  }


def bases(params: dict) -> jax.Array:
  """[K, h, w, c] basis images from their factors."""
  return factors.materialize({"a": params["a"], "b": params["b"]})


def materialize(params: dict) -> jax.Array:
  """Images from low-rank bases and addresses.

  Args:
    params: {'a': [K, c, h, r], 'b': [K, c, r, w], 'addresses': [n, K]}.

  Returns:
    [n, h, w, c], `images[i] = sum_k addresses[i, k] * bases(params)[k]`.
  """
  return memories.combine(params["addresses"], bases(params))
