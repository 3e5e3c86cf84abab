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


def test_validation_split_holds_out_train_images_per_class():
  full = data.load("digits")
  held = data.load("digits", validation_per_class=20)
  assert held.evaluation_split == "validation"
  assert full.evaluation_split == "test"
  np.testing.assert_array_equal(
    np.bincount(held.test_labels, minlength=10), np.full(10, 20)
  )
  assert len(held.train_labels) + 200 == len(full.train_labels)

  # Held-out and kept images together are the train split, none twice.
  def rows(images):
    return {row.tobytes() for row in images.reshape(len(images), -1)}

  kept, held_out = rows(held.train_images), rows(held.test_images)
  assert kept | held_out == rows(full.train_images)
  assert len(held.train_images) + len(held.test_images) == len(
    full.train_images
  )
  # The same split for every load (it never depends on a run's seed).
  again = data.load("digits", validation_per_class=20)
  np.testing.assert_array_equal(again.test_images, held.test_images)
  meta = held.metadata()
  assert meta["evaluation_split"] == "validation"
  assert meta["validation_per_class"] == 20 and meta["num_test"] == 200


def test_validation_split_is_refused_when_a_class_would_keep_nothing():
  smallest = int(np.bincount(data.load("digits").train_labels).min())
  with pytest.raises(ValueError, match="dataset.validation_per_class"):
    data.load("digits", validation_per_class=smallest)
  with pytest.raises(ValueError, match="dataset.validation_per_class"):
    data.load("digits", validation_per_class=-1)
