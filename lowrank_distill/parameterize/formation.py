"""Multi-formation: every stored image holds `f x f` training images (IDC).

A stored image of full size `h x w` is cut into `f x f` blocks of
`h/f x w/f`; each block, upsampled bilinearly back to `h x w`, is one
training image. One stored image gives `f**2` training images for the
storage of one, at `1/f` of the resolution: images per class (what the
objectives, the labels and the evaluation see) is `f**2` times the stored
images per class. `f = 1` is the identity (IDC-I).

`Formed` wraps any reconstructor (pixels: IDC; factors: LoIDC, the
plugin's factors as the stored images; mappers) into one with the same
`init` / `materialize` interface, so every objective composes with it.

Training image `j * f**2 + i * f + k` is block (row i, column k) of stored
image `j`; stored images are class-major, so training images are too (the
hard label of image `t` stays `t // images_per_class`).

References:
  Kim, Kim, Oh, Yun, Song, Jeong, Ha & Song, "Dataset Condensation via
  Efficient Synthetic-Data Parameterization", ICML 2022 (IDC); Yang et al.,
  "An Efficient Dataset Condensation Plugin and Its Application to
  Continual Learning", NeurIPS 2023 (LoIDC, Table 4).
"""

import dataclasses
import operator
from typing import Any

import jax
import jax.numpy as jnp

from lowrank_distill.parameterize import pixels


def check_factor(factor, image_shape) -> int:
  """Raises ValueError unless `factor` is an integer >= 1 dividing h and w.

  Returns int(factor).
  """
  h, w = int(image_shape[0]), int(image_shape[1])
  try:
    value = None if isinstance(factor, bool) else operator.index(factor)
  except TypeError:
    value = None
  divisors = [f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]
  if value is None or value not in divisors:
    raise ValueError(
      f"synset.formation must be an integer >= 1 dividing the image's "
      f"height and width ({h}x{w}): one of {divisors}; got {factor!r}"
    )
  return value


def stored_per_class(images_per_class: int, factor: int) -> int:
  """Stored images per class for `images_per_class` training images.

  Raises:
    ValueError unless images_per_class is a positive multiple of factor**2.
  """
  per_stored = factor * factor
  if images_per_class < 1 or images_per_class % per_stored:
    raise ValueError(
      f"images per class ({images_per_class}) must be a positive multiple "
      f"of formation**2 = {per_stored}: every stored image gives "
      f"{per_stored} training images at synset.formation {factor}"
    )
  return images_per_class // per_stored


def form(stored, *, factor: int) -> jax.Array:
  """Training images from stored images.

  Args:
    stored: [n, h, w, c], h and w divisible by `factor`.
    factor: f.

  Returns:
    [n * f**2, h, w, c]: image `j * f**2 + i * f + k` is block (i, k) of
    `stored[j]` resized bilinearly (half-pixel centres, edges clamped, as
    PyTorch's `Upsample(mode='bilinear')`) to h x w.
  """
  if factor == 1:
    return stored
  n, h, w, c = stored.shape
  blocks = stored.reshape(n, factor, h // factor, factor, w // factor, c)
  blocks = jnp.transpose(blocks, (0, 1, 3, 2, 4, 5)).reshape(
    n * factor * factor, h // factor, w // factor, c
  )
  # Upsampling applies no antialiasing; 'linear' is bilinear in h and w.
  return jax.image.resize(
    blocks, (blocks.shape[0], h, w, c), method="linear", antialias=False
  )


def tile(images, *, factor: int) -> jax.Array:
  """Stored images holding downsampled real images: the 'real' init.

  Args:
    images: [n * f**2, h, w, c].
    factor: f.

  Returns:
    [n, h, w, c]: block (i, k) of stored image j is image
    `j * f**2 + i * f + k` averaged over f x f pixel blocks, so `form`
    gives back a blurred copy of every image. (The reference takes every
    f-th pixel; averaging keeps one-pixel strokes.)
  """
  if factor == 1:
    return images
  m, h, w, c = images.shape
  n = m // (factor * factor)
  small = images.reshape(m, h // factor, factor, w // factor, factor, c)
  small = small.mean(axis=(2, 4))  # [m, h/f, w/f, c]
  small = small.reshape(n, factor, factor, h // factor, w // factor, c)
  return jnp.transpose(small, (0, 1, 3, 2, 4, 5)).reshape(n, h, w, c)


@dataclasses.dataclass(frozen=True)
class Formed:
  """A reconstructor whose images are formed `factor x factor` times.

  The same `init` / `materialize` pair as a reconstructor module:
  `images_per_class` counts training images (a multiple of `factor**2`);
  the params are the inner kind's, for `images_per_class / factor**2`
  stored images per class.

  Attributes:
    kind: the inner reconstructor module (pixels, factors, mappers).
    factor: f >= 2 (f = 1 needs no wrapper).
  """

  kind: Any
  factor: int

  def init(
    self,
    key,
    *,
    num_classes: int,
    images_per_class: int,
    image_shape,
    method: str = "noise",
    real_images=None,
    **kind_kwargs,
  ) -> dict:
    """The inner kind's params for the stored images.

    'real' fills each stored image with `factor**2` real images of its
    class (`tile`); the inner kind then initialises from those (a copy for
    pixels, their truncated SVD for factors and mappers).

    Args:
      real_images: [num_classes, images_per_class, h, w, c] (training
        images per class), for 'real'.
      (the rest as the inner kind's `init`.)
    """
    shape = pixels.check_sizes(
      num_classes=num_classes,
      images_per_class=images_per_class,
      image_shape=image_shape,
    )
    check_factor(self.factor, shape)
    stored = stored_per_class(images_per_class, self.factor)
    if real_images is not None:
      flat = pixels.real_batch(
        real_images,
        num_classes=num_classes,
        images_per_class=images_per_class,
        image_shape=shape,
      )
      real_images = tile(flat, factor=self.factor)
    return self.kind.init(
      key,
      num_classes=num_classes,
      images_per_class=stored,
      image_shape=shape,
      method=method,
      real_images=real_images,
      **kind_kwargs,
    )

  def materialize(self, params: dict) -> jax.Array:
    """[n_stored * factor**2, h, w, c] training images."""
    return form(self.kind.materialize(params), factor=self.factor)

  def stored_images(self, params: dict) -> jax.Array:
    """[n_stored, h, w, c]: the images as stored, before the formation."""
    return self.kind.materialize(params)
