"""Differentiable siamese augmentation (DSA).

A strategy string such as `'color_crop_cutout_flip_scale_rotate'` names op
groups; every call draws one group uniformly and applies it. Drawing the
parameters (`sample`) and applying them (`apply`) are separate pure
functions, so the same draw can transform a real batch and a synthetic batch
(siamese mode) and gradients flow into the images through `apply`.

In siamese mode one draw is shared by the whole batch and it does not depend
on the batch size: `sample(key, ...)` with the same key gives the same
transformation for a real batch of 256 and a synthetic batch of 10. In
per-sample mode (evaluation) every image gets its own draw, but the op group
is still one per call.

Geometric ops (`scale`, `rotate`) resample bilinearly with zero padding on
the grid of torch's `affine_grid`/`grid_sample` with `align_corners=False`,
so neutral parameters are exactly the identity.

References:
  Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
  Augmentation", ICML 2021 (the reference `ParamDiffAug` parameters).
"""

import math
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

BRIGHTNESS = 1.0  # brightness offset ~ U(-0.5, 0.5) * BRIGHTNESS
SATURATION = 2.0  # saturation factor ~ U(0, SATURATION)
CONTRAST = 0.5  # contrast factor ~ U(CONTRAST, CONTRAST + 1)
CROP_RATIO = 0.125  # max translation, as a fraction of the size
CUTOUT_RATIO = 0.5  # cutout side, as a fraction of the size
FLIP_PROB = 0.5
SCALE_RATIO = 1.2  # scale factors ~ U(1 / SCALE_RATIO, SCALE_RATIO)
ROTATE_DEGREES = 15.0  # angle ~ U(-ROTATE_DEGREES, ROTATE_DEGREES)

# Every parameter is derived from one row of a single uniform draw, so the
# rows do not depend on the strategy, and in siamese mode (one column) not on
# the batch size either.
_ROWS = (
  "group",
  "brightness",
  "saturation",
  "contrast",
  "crop_h",
  "crop_w",
  "cutout_h",
  "cutout_w",
  "flip",
  "scale_h",
  "scale_w",
  "rotate",
)


@flax.struct.dataclass
class AugParams:
  """One draw of DSA parameters for a batch of n images.

  Pairs along the last axis are ordered (height, width), i.e. (y, x).

  Attributes:
    group: [] int32, the index of the op group (in the strategy) to apply.
    brightness: [n] offset added to every pixel, in [-0.5, 0.5).
    saturation: [n] factor on the deviation from the channel mean, [0, 2).
    contrast: [n] factor on the deviation from the image mean, [0.5, 1.5).
    crop_shift: [n, 2] int32 shift (dy, dx): out[i, j] = x[i + dy, j + dx],
      zero outside; |dy| <= int(h * 0.125 + 0.5), likewise dx with w.
    cutout_centre: [n, 2] int32 centre (cy, cx) of the zeroed rectangle of
      side int(h * 0.5 + 0.5) by int(w * 0.5 + 0.5).
    flip: [n] bool, whether to mirror the width axis.
    scale: [n, 2] grid factors (sy, sx) in [1/1.2, 1.2); above 1 shrinks.
    rotate: [n] angle in radians, in [-15, 15) degrees.
  """

  group: jax.Array
  brightness: jax.Array
  saturation: jax.Array
  contrast: jax.Array
  crop_shift: jax.Array
  cutout_centre: jax.Array
  flip: jax.Array
  scale: jax.Array
  rotate: jax.Array


def _crop_limit(size: int) -> int:
  return int(size * CROP_RATIO + 0.5)


def _cutout_size(size: int) -> int:
  return int(size * CUTOUT_RATIO + 0.5)


def _per_sample(x, n: int):
  """[n] -> [n, 1, 1, 1], for broadcasting against NHWC images."""
  return jnp.reshape(x, (n, 1, 1, 1))


def brightness(params: AugParams, images):
  """Adds a per-image offset. images: [n, h, w, c] -> [n, h, w, c]."""
  b = params.brightness.astype(images.dtype)
  return images + _per_sample(b, images.shape[0])


def saturation(params: AugParams, images):
  """Scales each pixel's deviation from its mean over channels."""
  s = _per_sample(params.saturation.astype(images.dtype), images.shape[0])
  mean = jnp.mean(images, axis=3, keepdims=True)
  return (images - mean) * s + mean


def contrast(params: AugParams, images):
  """Scales each image's deviation from its mean over (h, w, c)."""
  s = _per_sample(params.contrast.astype(images.dtype), images.shape[0])
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) * s + mean


def color(params: AugParams, images):
  """Brightness, then saturation, then contrast (the reference order)."""
  return contrast(params, saturation(params, brightness(params, images)))


def crop(params: AugParams, images):
  """Translates by whole pixels with zero fill (the reference pad-and-crop)."""
  _, h, w, _ = images.shape

  def one(image, shift):
    rows = jnp.arange(h) + shift[0]
    cols = jnp.arange(w) + shift[1]
    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[
      None, :
    ]
    rows = jnp.clip(rows, 0, h - 1)
    cols = jnp.clip(cols, 0, w - 1)
    moved = image[rows[:, None], cols[None, :]]
    return moved * valid[:, :, None].astype(image.dtype)

  return jax.vmap(one)(images, params.crop_shift)


def cutout(params: AugParams, images):
  """Zeroes a rectangle of half the size; it may stick out of the image."""
  n, h, w, _ = images.shape
  size_h, size_w = _cutout_size(h), _cutout_size(w)
  top = params.cutout_centre[:, 0:1] - size_h // 2  # [n, 1]
  left = params.cutout_centre[:, 1:2] - size_w // 2
  rows = jnp.arange(h)[None, :] - top  # [n, h]
  cols = jnp.arange(w)[None, :] - left  # [n, w]
  in_rows = (rows >= 0) & (rows < size_h)
  in_cols = (cols >= 0) & (cols < size_w)
  hole = in_rows[:, :, None] & in_cols[:, None, :]  # [n, h, w]
  keep = jnp.reshape(~hole, (n, h, w, 1)).astype(images.dtype)
  return images * keep


def flip(params: AugParams, images):
  """Mirrors the width axis of the images whose `flip` is set."""
  mask = jnp.reshape(params.flip, (images.shape[0], 1, 1, 1))
  return jnp.where(mask, images[:, :, ::-1, :], images)


def _bilinear(image, iy, ix):
  """Samples image [h, w, c] at pixel coordinates iy, ix [h, w]; zeros pad."""
  h, w, c = image.shape
  flat = jnp.reshape(image, (h * w, c))
  y0 = jnp.floor(iy)
  x0 = jnp.floor(ix)
  wy1 = (iy - y0).astype(image.dtype)
  wx1 = (ix - x0).astype(image.dtype)
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  out = jnp.zeros_like(image)
  for dy, wy in ((0, 1 - wy1), (1, wy1)):
    for dx, wx in ((0, 1 - wx1), (1, wx1)):
      y, x = y0 + dy, x0 + dx
      valid = (y >= 0) & (y < h) & (x >= 0) & (x < w)
      index = jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)
      values = jnp.reshape(jnp.take(flat, index.reshape(-1), axis=0), (h, w, c))
      weight = wy * wx * valid.astype(image.dtype)
      out = out + values * weight[:, :, None]
  return out


def affine(images, theta):
  """Resamples images on torch's affine grid (`align_corners=False`).

  The output pixel at normalised coordinates (x, y) in [-1, 1] reads the
  input at `theta @ [x, y, 1]`, bilinearly, with zeros outside. The maths is
  done in pixel units centred on the image, so theta = [[1, 0, 0], [0, 1, 0]]
  is exactly the identity.

  Args:
    images: [n, h, w, c].
    theta: [n, 2, 3] affine matrices acting on (x, y, 1), x the width axis.

  Returns:
    [n, h, w, c].
  """
  _, h, w, _ = images.shape
  v = jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2  # rows, from centre
  u = jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2  # columns
  v = jnp.broadcast_to(v[:, None], (h, w))
  u = jnp.broadcast_to(u[None, :], (h, w))
  theta = theta.astype(jnp.float32)

  def one(image, t):
    # Normalised x = 2u / w, y = 2v / h; back to pixels ix = x * w/2 + ...
    ix = t[0, 0] * u + t[0, 1] * (w / h) * v + t[0, 2] * (w / 2) + (w - 1) / 2
    iy = t[1, 0] * (h / w) * u + t[1, 1] * v + t[1, 2] * (h / 2) + (h - 1) / 2
    return _bilinear(image, iy, ix)

  return jax.vmap(one)(images, theta)


def scale(params: AugParams, images):
  """Scales the sampling grid by (sy, sx): theta = [[sx, 0, 0], [0, sy, 0]]."""
  sy, sx = params.scale[:, 0], params.scale[:, 1]
  zero = jnp.zeros_like(sx)
  theta = jnp.stack(
    [jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], 1
  )
  return affine(images, theta)


def rotate(params: AugParams, images):
  """Rotates the sampling grid: theta = [[cos, -sin, 0], [sin, cos, 0]]."""
  cos, sin = jnp.cos(params.rotate), jnp.sin(params.rotate)
  zero = jnp.zeros_like(cos)
  theta = jnp.stack(
    [jnp.stack([cos, -sin, zero], -1), jnp.stack([sin, cos, zero], -1)], 1
  )
  return affine(images, theta)


OPS: dict[str, Callable[[AugParams, jax.Array], jax.Array]] = {
  "color": color,
  "crop": crop,
  "cutout": cutout,
  "flip": flip,
  "scale": scale,
  "rotate": rotate,
}


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """Splits a strategy string into its op groups.

  Args:
    strategy: op names joined by '_' (e.g. 'color_crop_cutout'); 'none' (any
      case) or '' means no augmentation.

  Returns:
    The op names in order, () for no augmentation.

  Raises:
    ValueError: an op is not in `OPS`.
  """
  if strategy.strip().lower() in ("", "none"):
    return ()
  ops = tuple(strategy.split("_"))
  unknown = [op for op in ops if op not in OPS]
  if unknown:
    raise ValueError(
      f"dsa_strategy {strategy!r} has unknown op(s) {unknown}; valid ops: "
      f"{list(OPS)} joined by '_', or 'none'"
    )
  return ops


def sample(
  key,
  *,
  batch_size: int,
  image_shape: tuple[int, int, int],
  strategy: str = DEFAULT_STRATEGY,
  siamese: bool = True,
) -> AugParams:
  """Draws the op group and the parameters of every op for a batch.

  Args:
    key: a typed PRNG key; in siamese mode pass the same key for the real
      and the synthetic batch.
    batch_size: n, the number of images (static).
    image_shape: (h, w, c) of one image (static).
    strategy: the DSA strategy string (see `parse_strategy`).
    siamese: one draw broadcast to the whole batch (independent of n);
      otherwise one draw per image.

  Returns:
    AugParams whose per-image leaves have leading dimension n.

  References:
    Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
    Augmentation", ICML 2021.
  """
  ops = parse_strategy(strategy)
  h, w, _ = image_shape
  n = batch_size
  draws = jax.random.uniform(key, (len(_ROWS), 1 if siamese else n))
  rows = {name: draws[i] for i, name in enumerate(_ROWS)}

  def uniform(name, low, high):
    return jnp.broadcast_to(low + (high - low) * rows[name], (n,))

  def randint(name, low, high):
    """Uniform integers in [low, high)."""
    i = low + jnp.floor((high - low) * rows[name]).astype(jnp.int32)
    return jnp.broadcast_to(jnp.minimum(i, high - 1), (n,))

  crop_h, crop_w = _crop_limit(h), _crop_limit(w)
  # The reference's centre range: [0, size] for an even side, else [0, size).
  cut_h, cut_w = _cutout_size(h), _cutout_size(w)
  angle = math.radians(ROTATE_DEGREES)
  return AugParams(
    group=randint("group", 0, max(len(ops), 1))[0],
    brightness=uniform("brightness", -0.5 * BRIGHTNESS, 0.5 * BRIGHTNESS),
    saturation=uniform("saturation", 0.0, SATURATION),
    contrast=uniform("contrast", CONTRAST, CONTRAST + 1.0),
    crop_shift=jnp.stack(
      [
        randint("crop_h", -crop_h, crop_h + 1),
        randint("crop_w", -crop_w, crop_w + 1),
      ],
      -1,
    ),
    cutout_centre=jnp.stack(
      [
        randint("cutout_h", 0, h + 1 - cut_h % 2),
        randint("cutout_w", 0, w + 1 - cut_w % 2),
      ],
      -1,
    ),
    flip=jnp.broadcast_to(rows["flip"] < FLIP_PROB, (n,)),
    scale=jnp.stack(
      [
        uniform("scale_h", 1.0 / SCALE_RATIO, SCALE_RATIO),
        uniform("scale_w", 1.0 / SCALE_RATIO, SCALE_RATIO),
      ],
      -1,
    ),
    rotate=uniform("rotate", -angle, angle),
  )


def apply(params: AugParams, images, *, strategy: str = DEFAULT_STRATEGY):
  """Applies the op group `params.group` of `strategy`; differentiable.

  Args:
    params: a draw from `sample` for this batch size and image shape.
    images: [n, h, w, c].
    strategy: the strategy `params` was drawn for.

  Returns:
    [n, h, w, c] augmented images.

  References:
    Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
    Augmentation", ICML 2021.
  """
  ops = parse_strategy(strategy)
  if not ops:
    return images
  branches = [OPS[op] for op in ops]
  return jax.lax.switch(params.group, branches, params, images)


def augment(
  key,
  images,
  *,
  strategy: str = DEFAULT_STRATEGY,
  siamese: bool = True,
):
  """`apply(sample(key, ...), images)`. images: [n, h, w, c] -> same shape."""
  if not parse_strategy(strategy):
    return images
  params = sample(
    key,
    batch_size=images.shape[0],
    image_shape=tuple(images.shape[1:]),
    strategy=strategy,
    siamese=siamese,
  )
  return apply(params, images, strategy=strategy)


def without(strategy: str, op: str) -> str:
  """`strategy` with the op group `op` left out ('none' if nothing is left),
  e.g. IDC's network update drops 'cutout' when it applies CutMix."""
  kept = [name for name in parse_strategy(strategy) if name != op]
  return "_".join(kept) or "none"


def cutmix(key, images, targets, *, prob: float, beta: float = 1.0):
  """CutMix on a batch, applied with probability `prob` (once per batch).

  A box of area fraction `1 - lam` (lam ~ Beta(beta, beta), side
  `int(size * sqrt(1 - lam))`, centred on a uniform pixel and clipped to the
  image) is pasted from a random permutation of the batch into every image,
  and the targets mix as `ratio * targets + (1 - ratio) * targets[perm]`
  with `ratio` one minus the clipped box's area fraction: the reference's
  `rand_bbox` and loss weighting (Yun et al., ICCV 2019; IDC's network
  update).

  Args:
    key: a `jax.random.key`.
    images: [n, h, w, c].
    targets: [n, C] target probabilities.
    prob: the probability that the batch is mixed.
    beta: the Beta distribution's parameter.

  Returns:
    (images, targets) of the same shapes.
  """
  apply_key, lam_key, centre_key, perm_key = jax.random.split(key, 4)
  n, h, w = images.shape[:3]
  lam = jax.random.beta(lam_key, beta, beta)
  cut = jnp.sqrt(1.0 - lam)
  half_h = (h * cut).astype(jnp.int32) // 2
  half_w = (w * cut).astype(jnp.int32) // 2
  cy = jax.random.randint(centre_key, (), 0, h)
  cx = jax.random.randint(jax.random.fold_in(centre_key, 1), (), 0, w)
  rows = jnp.arange(h)
  cols = jnp.arange(w)
  inside = (
    (rows >= jnp.clip(cy - half_h, 0, h)) & (rows < jnp.clip(cy + half_h, 0, h))
  )[:, None] & (
    (cols >= jnp.clip(cx - half_w, 0, w)) & (cols < jnp.clip(cx + half_w, 0, w))
  )[None, :]
  inside = inside & (jax.random.uniform(apply_key) < prob)
  perm = jax.random.permutation(perm_key, n)
  mixed = jnp.where(inside[None, :, :, None], images[perm], images)
  ratio = 1.0 - jnp.mean(inside.astype(jnp.float32))
  return mixed, ratio * targets + (1.0 - ratio) * targets[perm]
