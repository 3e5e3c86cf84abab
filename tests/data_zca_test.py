"""Tests of lowrank_distill.data.zca."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_distill import data


def _correlated_images(n, *, seed=0, shape=(2, 2, 3)):
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  mixing = rng.normal(size=(d, d)) * 0.1 + np.eye(d)
  flat = rng.uniform(size=(n, d)) @ mixing / 3 + 0.2
  return flat.reshape(n, *shape).astype(np.float32)


@pytest.mark.parametrize("flavour", ["mtt", "kip"])
def test_zca_inverse_returns_input(flavour):
  images = _correlated_images(300)
  zca = data.fit_zca(images, flavour=flavour)
  assert zca.whiten.shape == (12, 12) and zca.mean.shape == (12,)
  assert zca.flavour == flavour and zca.eps == 0.1
  white = data.apply_zca(zca, images)
  assert white.shape == images.shape and isinstance(white, np.ndarray)
  np.testing.assert_allclose(data.invert_zca(zca, white), images, atol=1e-4)
  # jax arrays, under jit, with the transform as a pytree argument.
  round_trip = jax.jit(lambda z, x: data.invert_zca(z, data.apply_zca(z, x)))
  out = round_trip(zca, jnp.asarray(images))
  assert isinstance(out, jax.Array)
  np.testing.assert_allclose(out, images, atol=1e-4)
  np.testing.assert_allclose(
    data.apply_zca(zca, jnp.asarray(images)), white, atol=1e-4
  )


@pytest.mark.parametrize("flavour", ["mtt", "kip"])
def test_zca_whitened_covariance_is_identity_for_tiny_eps(flavour):
  images = _correlated_images(2000, seed=1)
  zca = data.fit_zca(images, flavour=flavour, eps=1e-8)
  white = data.apply_zca(zca, images).reshape(len(images), -1)
  cov = np.cov(white, rowvar=False, ddof=1 if flavour == "mtt" else 0)
  np.testing.assert_allclose(cov, np.eye(12), atol=1e-3)
  # ZCA is the symmetric whitening: the closest to the identity map.
  np.testing.assert_allclose(zca.whiten, zca.whiten.T, atol=1e-5)


def test_zca_regulariser_flavours_differ_as_specified():
  images = _correlated_images(500, seed=2)
  flat = images.reshape(500, -1).astype(np.float64)
  cov = np.cov(flat, rowvar=False, ddof=0)
  eigvals = np.linalg.eigvalsh(cov)
  kip = data.fit_zca(images, flavour="kip", eps=0.1)
  reg = 0.1 * np.trace(cov) / 12
  np.testing.assert_allclose(
    np.linalg.eigvalsh(kip.unwhiten.astype(float)) ** 2,
    eigvals + reg,
    rtol=1e-4,
  )
  mtt = data.fit_zca(images, flavour="mtt", eps=0.1)
  np.testing.assert_allclose(
    np.linalg.eigvalsh(mtt.unwhiten.astype(float)) ** 2,
    eigvals * 500 / 499 + 0.1,
    rtol=1e-4,
  )


def test_zca_shape_mismatch():
  zca = data.fit_zca(_correlated_images(10), flavour="kip")
  with pytest.raises(
    ValueError, match=r"fitted on images of shape \(2, 2, 3\)"
  ):
    data.apply_zca(zca, np.zeros((1, 3, 2, 2)))
