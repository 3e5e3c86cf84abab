"""Tests of lowrank_distill.data.dataset."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_distill import data


def test_metadata_is_json_and_deterministic():
  meta = data.load("digits", zca="kip").metadata()
  assert json.loads(json.dumps(meta)) == meta
  assert meta["zca"] == {"flavour": "kip", "eps": 0.1}
  assert meta["standardize"] is True
  assert meta["num_train"] == 1438 and meta["image_shape"] == [8, 8, 1]
  np.testing.assert_array_equal(
    data.load("digits").train_images, data.load("digits").train_images
  )


@pytest.mark.parametrize("flavour", ["mtt", "kip"])
def test_load_with_zca_and_back_to_unit_range(flavour):
  raw = data.load("digits", standardize=False)
  ds = data.load("digits", zca=flavour)
  assert ds.zca is not None and ds.zca.flavour == flavour
  # mtt whitens the [0, 1] images (MTT reference); kip standardises first.
  assert ds.standardize == (flavour == "kip")
  assert ds.metadata()["standardize"] == (flavour == "kip")
  np.testing.assert_allclose(
    ds.to_unit_range(ds.train_images), raw.train_images, atol=1e-4
  )
  np.testing.assert_allclose(
    ds.to_unit_range(jnp.asarray(ds.test_images[:5])),
    raw.test_images[:5],
    atol=1e-4,
  )
  np.testing.assert_allclose(
    ds.to_unit_range(ds.test_images[0]), raw.test_images[0], atol=1e-4
  )
  np.testing.assert_allclose(
    jax.jit(ds.to_unit_range)(ds.test_images[:3]),
    raw.test_images[:3],
    atol=1e-4,
  )
  # Fitted on train only: the train split, not test, has zero feature mean.
  flat = ds.train_images.reshape(len(ds.train_images), -1)
  np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-4)
