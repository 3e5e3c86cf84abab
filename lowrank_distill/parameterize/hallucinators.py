"""Hallucinators over bases (HaBa): each (hallucinator, basis) pair an image.

A set holds `m` basis images per class and `H` small hallucinator networks
shared by all classes; hallucinator `j` turns basis `b` into an image of
its class:

  x = dec_j(scale_j * enc_j(b) + shift_j)

with `enc` a `k x k` convolution without padding (c -> c channels), `scale`
and `shift` per-position, per-channel maps of the encoder's output
`(h-k+1) x (w-k+1) x c`, and `dec` the transposed `k x k` convolution back
to `h x w x c` (the reference's `StyleTranslator`, k = 3, as many middle
channels as image channels). Images per class are `m * H`; image
`(class_basis) * H + j` is hallucinator j on that basis (class-major).
Storage: the bases plus `H * (2 k^2 c^2 + 2 c + 2 (h-k+1)(w-k+1) c)`.

`lowrank_hallucinators` stores the bases as the low-rank plugin's factors
(LoHaBa). The paper's adversarial constraint that keeps the hallucinators
apart is an objective term, not part of the parameterization
(`objectives.hallucinator_contrast`, trajectory matching's
`distill.club_weight`).

References:
  Liu, Wang, Yang & Wang, "Dataset Distillation via Factorization",
  NeurIPS 2022 (HaBa); Yang et al., NeurIPS 2023 (LoHaBa, Table 4).
"""

import jax
import jax.numpy as jnp

from lowrank_distill import checks
from lowrank_distill.parameterize import pixels

METHODS = ("noise", "real")
KERNEL_SIZE = 3
_DIMS = ("NHWC", "HWIO", "NHWC")


def check_num_hallucinators(num_hallucinators) -> int:
  """Raises ValueError unless num_hallucinators is an integer >= 1."""
  return checks.positive_int("synset.num_hallucinators", num_hallucinators)


def check_image_size(image_shape) -> None:
  """Raises ValueError unless both sides exceed the kernel."""
  h, w = int(image_shape[0]), int(image_shape[1])
  if min(h, w) < KERNEL_SIZE:
    raise ValueError(
      f"hallucinators need images of at least {KERNEL_SIZE}x{KERNEL_SIZE} "
      f"(their {KERNEL_SIZE}x{KERNEL_SIZE} convolution); got {h}x{w}"
    )


def bases_per_class(images_per_class: int, num_hallucinators: int) -> int:
  """Basis images per class for `images_per_class` images.

  Raises:
    ValueError unless images_per_class is a positive multiple of H.
  """
  if images_per_class < 1 or images_per_class % num_hallucinators:
    raise ValueError(
      f"images per class ({images_per_class}) must be a positive multiple "
      f"of synset.num_hallucinators ({num_hallucinators}): every basis "
      f"gives one image per hallucinator"
    )
  return images_per_class // num_hallucinators


def images_multiple(*, num_hallucinators: int, **unused) -> int:
  """Images per class come in multiples of the hallucinator count."""
  del unused
  return check_num_hallucinators(num_hallucinators)


def init_hallucinators(key, *, num_hallucinators: int, image_shape) -> dict:
  """H hallucinators as PyTorch initialises the reference's layers.

  Convolution weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
  PyTorch's fan-in (`c * k^2` for both: a transposed convolution's weight
  is [in, out, k, k] and PyTorch reads its second axis), scale 1, shift 0.

  Returns:
    {'enc_kernel': [H, k, k, c, c], 'enc_bias': [H, c], 'scale', 'shift':
    [H, h-k+1, w-k+1, c], 'dec_kernel': [H, k, k, c, c], 'dec_bias':
    [H, c]}.
  """
  h, w, c = image_shape
  k = KERNEL_SIZE
  bound = (c * k * k) ** -0.5
  keys = jax.random.split(key, 4)

  def uniform(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

  inner = (num_hallucinators, h - k + 1, w - k + 1, c)
  return {
    "enc_kernel": uniform(keys[0], (num_hallucinators, k, k, c, c)),
    "enc_bias": uniform(keys[1], (num_hallucinators, c)),
    "scale": jnp.ones(inner, jnp.float32),
    "shift": jnp.zeros(inner, jnp.float32),
    "dec_kernel": uniform(keys[2], (num_hallucinators, k, k, c, c)),
    "dec_bias": uniform(keys[3], (num_hallucinators, c)),
  }


def hallucinate(one: dict, bases) -> jax.Array:
  """One hallucinator on [n, h, w, c] bases -> [n, h, w, c] images."""
  features = jax.lax.conv_general_dilated(
    bases,
    one["enc_kernel"],
    window_strides=(1, 1),
    padding="VALID",
    dimension_numbers=_DIMS,
    precision="highest",
  )
  features = features + one["enc_bias"][None, None, None]
  features = one["scale"][None] * features + one["shift"][None]
  images = jax.lax.conv_transpose(
    features,
    one["dec_kernel"],
    strides=(1, 1),
    padding="VALID",
    dimension_numbers=_DIMS,
    precision="highest",
  )
  return images + one["dec_bias"][None, None, None]


def apply_all(hallucinators: dict, bases) -> jax.Array:
  """Every hallucinator on every basis.

  Args:
    hallucinators: `init_hallucinators`'s dict (leading axis H).
    bases: [n, h, w, c], class-major.

  Returns:
    [n * H, h, w, c]: image `b * H + j` is hallucinator j on basis b.
  """
  images = jax.vmap(hallucinate, in_axes=(0, None))(hallucinators, bases)
  images = jnp.swapaxes(images, 0, 1)  # [n, H, h, w, c]
  return images.reshape(-1, *bases.shape[1:])


def real_bases(real_images, *, num_classes, images_per_class, shape, per_class):
  """The first `per_class` real images of each class, [C, per_class, ...]."""
  if real_images is None:
    return None
  flat = pixels.real_batch(
    real_images,
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=shape,
  )
  return flat.reshape(num_classes, images_per_class, *shape)[:, :per_class]


def init_over(
  base_kind,
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape,
  method: str,
  real_images,
  num_hallucinators: int,
  **base_kwargs,
) -> dict:
  """Bases of `base_kind` (a reconstructor module) and H hallucinators.

  The checks, the bases per class and the keys every hallucinator kind
  shares; `base_kwargs` go to `base_kind.init` (e.g. the factors' rank).
  """
  pixels.check_method(method, base_kind.METHODS)
  shape = pixels.check_sizes(
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
  )
  check_image_size(shape)
  num_hallucinators = check_num_hallucinators(num_hallucinators)
  m = bases_per_class(images_per_class, num_hallucinators)
  base_key, hallucinator_key = jax.random.split(key)
  return {
    "bases": base_kind.init(
      base_key,
      num_classes=num_classes,
      images_per_class=m,
      image_shape=shape,
      method=method,
      real_images=real_bases(
        real_images,
        num_classes=num_classes,
        images_per_class=images_per_class,
        shape=shape,
        per_class=m,
      ),
      **base_kwargs,
    ),
    "hallucinators": init_hallucinators(
      hallucinator_key, num_hallucinators=num_hallucinators, image_shape=shape
    ),
  }


def init(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape: tuple[int, int, int],
  method: str = "noise",
  real_images=None,
  num_hallucinators: int,
) -> dict:
  """Initial bases (pixels) and hallucinators.

  Args:
    key: a `jax.random.key`.
    num_classes: classes in the set.
    images_per_class: images per class, a multiple of H.
    image_shape: (h, w, c), both sides >= 3.
    method: the bases' init: 'noise' (standard normal) or 'real' (real
      images of each class).
    real_images: [num_classes, images_per_class, h, w, c] for 'real' (the
      first images_per_class / H of each class become the bases).
    num_hallucinators: H >= 1.

  Returns:
    {'bases': {'images': [C * m, h, w, c]}, 'hallucinators': {...}}.
  """
  return init_over(
    pixels,
    key,
    num_classes=num_classes,
    images_per_class=images_per_class,
    image_shape=image_shape,
    method=method,
    real_images=real_images,
    num_hallucinators=num_hallucinators,
  )


def bases(params: dict) -> jax.Array:
  """[C * m, h, w, c] basis images."""
  return pixels.materialize(params["bases"])


def materialize(params: dict) -> jax.Array:
  """[C * m * H, h, w, c] images: every hallucinator on every basis."""
  return apply_all(params["hallucinators"], bases(params))
