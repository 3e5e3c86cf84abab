"""Full-rank pixels: the synthetic images are the parameters.

The baseline parameterization of DC, DSA, DM and MTT. A set of
`n = num_classes * images_per_class` images is class-major: image `i` has
hard label `i // images_per_class`.

This module also holds the argument checks the low-rank kinds share.

References:
  Wang et al., "Dataset Distillation", arXiv 2018.
"""

import jax
import jax.numpy as jnp

from lowrank_distill import checks

METHODS = ("noise", "real")


def check_method(method: str, valid) -> None:
  """Raises ValueError naming the field and the valid init methods."""
  checks.check_choice("synset.init", method, valid)


def check_sizes(
  *, num_classes: int, images_per_class: int, image_shape
) -> tuple[int, int, int]:
  """Checks the set's sizes; returns `image_shape` as an int triple."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if images_per_class < 1:
    raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (h, w, c) >= 1, got {image_shape}")
  return shape


def real_batch(
  real_images, *, num_classes: int, images_per_class: int, image_shape
) -> jax.Array:
  """Flattens class-major real images for initialisation.

  Args:
    real_images: [num_classes, images_per_class, h, w, c], or the same
      flattened to [n, h, w, c] (class-major).
    num_classes: classes in the synthetic set.
    images_per_class: images per class in the synthetic set.
    image_shape: (h, w, c).

  Returns:
    [n, h, w, c] float32 images, n = num_classes * images_per_class.
  """
  n = num_classes * images_per_class
  if real_images is None:
    raise ValueError(
      "init method 'real' needs real_images of shape "
      f"[{num_classes}, {images_per_class}, *{tuple(image_shape)}]"
    )
  shape = tuple(real_images.shape)
  accepted = (
    (num_classes, images_per_class, *image_shape),
    (n, *image_shape),
  )
  if shape not in accepted:
    raise ValueError(
      f"real_images has shape {shape}; expected {accepted[0]} "
      f"(class-major) or {accepted[1]}"
    )
  return jnp.asarray(real_images, jnp.float32).reshape(n, *image_shape)


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
) -> dict:
  """Initial pixel parameters.

  Args:
    key: a `jax.random.key` (used by 'noise').
    num_classes: classes in the set.
    images_per_class: images per class.
    image_shape: (h, w, c).
    method: 'noise' (standard normal pixels, the scale of standardised
      data) or 'real' (a copy of `real_images`).
    real_images: [num_classes, images_per_class, h, w, c] for 'real'.

  Returns:
    {'images': [n, h, w, c] float32}.
  """
  check_method(method, METHODS)
  shape = check_sizes(
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
  )
  n = num_classes * images_per_class
  if method == "real":
    images = real_batch(
      real_images,
      num_classes=num_classes,
      images_per_class=images_per_class,
      image_shape=shape,
    )
  else:
    images = jax.random.normal(key, (n, *shape), jnp.float32)
  return {"images": images}


def materialize(params: dict) -> jax.Array:
  """The images: `params['images']`, [n, h, w, c]."""
  return params["images"]
