"""Hallucinators over low-rank bases (LoHaBa).

As `hallucinators`, but the bases are the low-rank plugin's factors (every
basis channel `a (h x r) @ b (r x w)`): at the same storage a set holds
more bases, each giving one image per hallucinator.

References:
  Yang et al., "An Efficient Dataset Condensation Plugin and Its
  Application to Continual Learning", NeurIPS 2023 (Table 4); Liu et al.,
  "Dataset Distillation via Factorization", NeurIPS 2022 (HaBa).
"""

import jax

from lowrank_distill.parameterize import factors, hallucinators

METHODS = factors.METHODS
images_multiple = hallucinators.images_multiple


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
  num_hallucinators: int,
  rank: int,
) -> dict:
  """Initial low-rank bases and hallucinators.

  Args:
    (as `hallucinators.init`), and
    method: the bases' init, as `factors.init` ('real' / 'svd': the
      truncated SVD of real images).
    rank: r, 1 <= r <= min(h, w).

  Returns:
    {'bases': {'a': [C * m, c, h, r], 'b': [C * m, c, r, w]},
    'hallucinators': {...}}.
  """
  return hallucinators.init_over(
    factors,
    key,
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
    method=method,
    real_images=real_images,
    num_hallucinators=num_hallucinators,
    rank=rank,
  )


def bases(params: dict) -> jax.Array:
  """[C * m, h, w, c] basis images from their factors."""
  return factors.materialize(params["bases"])


def materialize(params: dict) -> jax.Array:
  """[C * m * H, h, w, c] images: every hallucinator on every basis."""
  return hallucinators.apply_all(params["hallucinators"], bases(params))
