r"""DSA in PyTorch, as the reference's `DiffAugment` with `ParamDiffAug`.

For the evaluation loop in `eval_vs_torch.py`: every training batch draws
one op group of the strategy (the reference's mode 'S') and per-image
parameters for it, in NCHW. The parameters, ranges and op order are the
reference's (Zhao & Bilen, ICML 2021), the same as `lowrank_distill.augment`:
brightness U(-0.5, 0.5), saturation U(0, 2), contrast U(0.5, 1.5), crop
shift up to 0.125 of the side with zero fill, cutout of half the side,
flip with probability 0.5, scale U(1/1.2, 1.2) per axis and rotation
U(-15, 15) degrees on `affine_grid` / `grid_sample` (bilinear, zeros,
`align_corners=False`).

`apply` takes explicit parameters (a dict of tensors with the fields of our
`augment.AugParams`), so the same draw can be given to both sides:

  python benchmarks/torch_dsa.py check   # every op: ours vs this, one draw

Not part of the library or the tests (those never import torch).
"""

import dataclasses
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from lowrank_distill import augment as ours

# The reference's `ParamDiffAug` values, as ours holds them.
BRIGHTNESS, SATURATION, CONTRAST = (
  ours.BRIGHTNESS,
  ours.SATURATION,
  ours.CONTRAST,
)
CROP_RATIO, CUTOUT_RATIO = ours.CROP_RATIO, ours.CUTOUT_RATIO
FLIP_PROB, SCALE_RATIO = ours.FLIP_PROB, ours.SCALE_RATIO
ROTATE_DEGREES = ours.ROTATE_DEGREES


def _column(x):
  return x.reshape(-1, 1, 1, 1)


def color(params, x):
  """Brightness, saturation, contrast (the reference order). x: NCHW."""
  x = x + _column(params["brightness"])
  mean = x.mean(dim=1, keepdim=True)
  x = (x - mean) * _column(params["saturation"]) + mean
  mean = x.mean(dim=(1, 2, 3), keepdim=True)
  return (x - mean) * _column(params["contrast"]) + mean


def crop(params, x):
  """out[i, j] = x[i + dy, j + dx], zero outside (pad and gather)."""
  n, _, h, w = x.shape
  pad = max(int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5))
  padded = F.pad(x, (pad, pad, pad, pad))
  rows = (
    torch.arange(h, device=x.device)[None, :] + params["crop_shift"][:, 0:1]
  )
  cols = (
    torch.arange(w, device=x.device)[None, :] + params["crop_shift"][:, 1:2]
  )
  batch = torch.arange(n, device=x.device)[:, None, None]
  # [n, h, w, c] gathered, back to NCHW.
  out = padded.permute(0, 2, 3, 1)[
    batch, rows[:, :, None] + pad, cols[:, None, :] + pad
  ]
  return out.permute(0, 3, 1, 2)


def cutout(params, x):
  """Zeroes a rectangle of half the side around each image's centre."""
  _, _, h, w = x.shape
  size_h, size_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
  top = params["cutout_centre"][:, 0:1] - size_h // 2
  left = params["cutout_centre"][:, 1:2] - size_w // 2
  rows = torch.arange(h, device=x.device)[None, :] - top
  cols = torch.arange(w, device=x.device)[None, :] - left
  hole = ((rows >= 0) & (rows < size_h))[:, :, None] & (
    (cols >= 0) & (cols < size_w)
  )[:, None, :]
  return x * (~hole)[:, None].to(x.dtype)


def flip(params, x):
  return torch.where(_column(params["flip"]), x.flip(3), x)


def _affine(x, theta):
  grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
  return F.grid_sample(x, grid, align_corners=False)


def scale(params, x):
  sy, sx = params["scale"][:, 0], params["scale"][:, 1]
  zero = torch.zeros_like(sx)
  theta = torch.stack(
    [torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1
  )
  return _affine(x, theta)


def rotate(params, x):
  cos, sin = torch.cos(params["rotate"]), torch.sin(params["rotate"])
  zero = torch.zeros_like(cos)
  theta = torch.stack(
    [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)],
    1,
  )
  return _affine(x, theta)


FUNCTIONS = {
  "color": color,
  "crop": crop,
  "cutout": cutout,
  "flip": flip,
  "scale": scale,
  "rotate": rotate,
}
OPS = tuple(FUNCTIONS)


def parse(strategy: str) -> tuple[str, ...]:
  """The op groups of `strategy`; ours parses it (the same names)."""
  return ours.parse_strategy(strategy)


def sample(n: int, h: int, w: int, device, generator=None) -> dict:
  """Per-image parameters of every op, drawn as the reference does."""

  def rand(*shape):
    return torch.rand(*shape, generator=generator).to(device)

  def randint(low, high, *shape):
    return torch.randint(low, high, shape, generator=generator).to(device)

  crop_h, crop_w = int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5)
  cut_h, cut_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
  angle = math.radians(ROTATE_DEGREES)
  return {
    "brightness": (rand(n) - 0.5) * BRIGHTNESS,
    "saturation": rand(n) * SATURATION,
    "contrast": rand(n) + CONTRAST,
    "crop_shift": torch.stack(
      [randint(-crop_h, crop_h + 1, n), randint(-crop_w, crop_w + 1, n)], -1
    ),
    "cutout_centre": torch.stack(
      [randint(0, h + 1 - cut_h % 2, n), randint(0, w + 1 - cut_w % 2, n)], -1
    ),
    "flip": rand(n) < FLIP_PROB,
    "scale": 1.0 / SCALE_RATIO + (SCALE_RATIO - 1.0 / SCALE_RATIO) * rand(n, 2),
    "rotate": (rand(n) - 0.5) * 2 * angle,
  }


def augment(x, strategy: str, generator=None):
  """One op group of `strategy`, drawn uniformly, per-image parameters."""
  ops = parse(strategy)
  if not ops:
    return x
  op = ops[int(torch.randint(len(ops), (1,), generator=generator))]
  n, _, h, w = x.shape
  return FUNCTIONS[op](sample(n, h, w, x.device, generator), x)


def from_ours(params) -> dict:
  """`augment.AugParams` (numpy-convertible leaves) -> this module's dict."""
  out = {}
  for field in dataclasses.fields(params):
    name = field.name
    if name == "group":  # one op group per batch, drawn by `augment`
      continue
    value = np.asarray(getattr(params, name))
    out[name] = torch.from_numpy(
      value.astype(np.int64) if value.dtype.kind == "i" else value.copy()
    )
  return out


def check(shape=(28, 28, 1), n: int = 64, seed: int = 0) -> dict:
  """Max |ours - this| per op for one per-image draw on random images."""
  import jax

  images = np.random.default_rng(seed).normal(size=(n, *shape))
  images = images.astype(np.float32)
  params = ours.sample(
    jax.random.key(seed),
    batch_size=n,
    image_shape=shape,
    strategy=ours.DEFAULT_STRATEGY,
    siamese=False,
  )
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  theirs_params = from_ours(params)
  diffs = {}
  for op in OPS:
    a = np.asarray(ours.OPS[op](params, images))
    b = FUNCTIONS[op](theirs_params, x).numpy().transpose(0, 2, 3, 1)
    diffs[op] = float(np.max(np.abs(a - b)))
  return diffs


if __name__ == "__main__":
  if sys.argv[1:] != ["check"]:
    sys.exit(__doc__)
  worst = check()
  for op, diff in worst.items():
    print(f"{op:7s} max |ours - torch| = {diff:.2e}")
  print("AGREE" if max(worst.values()) < 1e-4 else "DISAGREE")
