"""Pictures of synthetic sets: image grids and low-rank components."""

import pathlib

import numpy as np
from PIL import Image


def image_grid(images, *, nrow: int, pad: int = 1, scale: int = 1):
  """Tiles images into one picture, `nrow` images per row.

  Args:
    images: [n, h, w, c] in [0, 1] (values outside are clipped); c is 1 or 3.
    nrow: images per row.
    pad: pixels of white between images.
    scale: nearest-neighbour upscaling factor (tiny images stay visible).

  Returns:
    uint8 [rows * (h + pad) + pad, nrow * (w + pad) + pad, c].
  """
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  nrow = max(1, min(nrow, n))
  rows = -(-n // nrow)
  grid = np.ones(
    (rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32
  )
  for i, image in enumerate(images):
    r, col = divmod(i, nrow)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top : top + h, left : left + w] = image
  return (grid * 255 + 0.5).astype(np.uint8)


def save_png(path, picture) -> pathlib.Path:
  """Writes a uint8 [H, W, 1|3] array as PNG, creating parent folders."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if picture.shape[-1] == 1:
    picture = picture[..., 0]
  Image.fromarray(picture).save(path)
  return path


def _auto_scale(size: int) -> int:
  return max(1, 64 // size)


def save_image_grid(path, images, *, nrow: int) -> pathlib.Path:
  """Saves [n, h, w, c] images in [0, 1] as a grid PNG."""
  images = np.asarray(images)
  return save_png(
    path, image_grid(images, nrow=nrow, scale=_auto_scale(images.shape[1]))
  )


def _normalise(x):
  """Maps each item of [m, ...] to [0, 1] by its own min and max."""
  axes = tuple(range(1, x.ndim))
  lo = x.min(axis=axes, keepdims=True)
  hi = x.max(axis=axes, keepdims=True)
  return (x - lo) / np.maximum(hi - lo, 1e-12)


def rank_one_components(param: str, params: dict, *, max_images: int = 10):
  """The rank-one pictures a low-rank synthetic set is built from.

  factors: for each of the first `max_images` images, its r components
  `a[:, k] b[k, :]` (channel-wise), [max_images * r, h, w, c].
  mappers: for each set, the r*r basis images `u[:, i] v[j, :]` that its codes
  mix, [k * r * r, h, w, c].

  Returns:
    (components [m, h, w, c] each normalised to [0, 1], items per row).
  """
  if param == "factors":
    a, b = params["a"][:max_images], params["b"][:max_images]
    comps = np.einsum("nchk,nckw->nkhwc", a, b)
    return _normalise(comps.reshape(-1, *comps.shape[2:])), a.shape[-1]
  if param == "mappers":
    u, v = params["u"], params["v"]
    comps = np.einsum("schi,scjw->sijhwc", u, v)
    r = u.shape[-1]
    return _normalise(comps.reshape(-1, *comps.shape[3:])), r * r
  raise ValueError(
    f"param {param!r} has no low-rank components; valid: factors, mappers"
  )


def save_components(path, param: str, params: dict) -> pathlib.Path:
  """Saves the rank-one components of factors or mappers as a grid PNG."""
  comps, nrow = rank_one_components(param, params)
  return save_png(
    path, image_grid(comps, nrow=nrow, scale=_auto_scale(comps.shape[1]))
  )
