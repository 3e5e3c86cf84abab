"""ZCA whitening in the two flavours used in dataset distillation.

- `mtt`: fitted on [0, 1] images (no standardisation), absolute regulariser
  `eps` added to the covariance eigenvalues, unbiased covariance; as kornia's
  `ZCAWhitening(eps=0.1)` in the MTT reference code.
- `kip`: fitted on standardised images, regulariser `eps * trace(cov) / d`,
  covariance normalised by `n`; as in KIP and FRePo.

Both centre with the fitted feature mean so that the transform is exactly
invertible (`invert_zca`), which visualisation needs.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import checks

ZCA_FLAVOURS = ("none", "mtt", "kip")

_CHUNK = 4096


@flax.struct.dataclass
class ZCA:
  """A fitted ZCA transform on flattened images.

  Attributes:
    mean: [d] feature mean of the fitting images.
    whiten: [d, d] symmetric whitening matrix.
    unwhiten: [d, d] its inverse.
    image_shape: `(h, w, c)` with `h * w * c = d`.
    flavour: `mtt` or `kip`.
    eps: the regulariser as given to `fit_zca`.
  """

  mean: np.ndarray
  whiten: np.ndarray
  unwhiten: np.ndarray
  image_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)
  flavour: str = flax.struct.field(pytree_node=False)
  eps: float = flax.struct.field(pytree_node=False)


def _covariance(flat: np.ndarray, mean: np.ndarray, *, ddof: int):
  """Float64 covariance of [n, d] rows, in chunks to bound memory."""
  d = flat.shape[1]
  cov = np.zeros((d, d), np.float64)
  for start in range(0, len(flat), _CHUNK):
    centred = flat[start : start + _CHUNK].astype(np.float64) - mean
    cov += centred.T @ centred
  return cov / (len(flat) - ddof)


def fit_zca(images, *, flavour: str, eps: float = 0.1) -> ZCA:
  """Fits ZCA whitening on `images` (the training split).

  Args:
    images: [n, h, w, c]; [0, 1] images for `mtt`, standardised for `kip`.
    flavour: `mtt` (absolute `eps`) or `kip` (`eps * trace(cov) / d`).
    eps: the regulariser added to the covariance eigenvalues.

  Returns:
    The transform; the eigendecomposition is done in float64, the matrices
    are stored as float32.

  References:
    Cazenavette et al., "Dataset Distillation by Matching Training
    Trajectories", CVPR 2022 (`mtt`). Nguyen et al., "Dataset Distillation
    with Infinitely Wide Convolutional Networks", NeurIPS 2021, and Zhou et
    al., "Dataset Distillation using Neural Feature Regression", NeurIPS 2022
    (`kip`).
  """
  checks.check_choice("zca flavour", flavour, ZCA_FLAVOURS[1:])
  images = np.asarray(images)
  if images.ndim != 4 or len(images) < 2:
    raise ValueError(
      f"fit_zca needs images [n >= 2, h, w, c], got shape {images.shape}"
    )
  flat = images.reshape(len(images), -1)
  mean = flat.mean(axis=0, dtype=np.float64)
  if flavour == "mtt":
    cov = _covariance(flat, mean, ddof=1)
    reg = eps
  else:
    cov = _covariance(flat, mean, ddof=0)
    reg = eps * np.trace(cov) / cov.shape[0]
  eigvals, eigvecs = np.linalg.eigh(cov)
  scale = np.sqrt(np.maximum(eigvals, 0.0) + reg)
  return ZCA(
    mean=mean.astype(np.float32),
    whiten=((eigvecs / scale) @ eigvecs.T).astype(np.float32),
    unwhiten=((eigvecs * scale) @ eigvecs.T).astype(np.float32),
    image_shape=tuple(int(s) for s in images.shape[1:]),
    flavour=flavour,
    eps=float(eps),
  )


def _transform(zca: ZCA, images, matrix, *, forward: bool):
  if isinstance(images, jax.Array):
    matmul = functools.partial(jnp.matmul, precision="highest")
  else:
    images = np.asarray(images, np.float32)
    matmul = np.matmul
  shape = tuple(images.shape)
  if shape[-3:] != tuple(zca.image_shape):
    raise ValueError(
      f"ZCA was fitted on images of shape {zca.image_shape}, got trailing "
      f"shape {shape[-3:]}"
    )
  flat = images.reshape(-1, zca.mean.shape[0])
  mean = zca.mean[None, :]
  out = matmul(flat - mean, matrix) if forward else matmul(flat, matrix) + mean
  return out.reshape(shape)


def apply_zca(zca: ZCA, images):
  """Whitens images.

  Args:
    zca: from `fit_zca`.
    images: [..., h, w, c], numpy or jax (jittable for jax inputs).

  Returns:
    Whitened images of the same shape and array type.
  """
  return _transform(zca, images, zca.whiten, forward=True)


def invert_zca(zca: ZCA, images):
  """Undoes `apply_zca`: images [..., h, w, c] -> same shape."""
  return _transform(zca, images, zca.unwhiten, forward=False)
