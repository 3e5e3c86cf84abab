"""Tests of lowrank_distill.data.digits."""

import chex
import numpy as np

from lowrank_distill import data
from lowrank_distill.data import digits


def test_digits_shapes_split_and_stats():
  from sklearn.datasets import load_digits

  ds = data.load("digits")
  chex.assert_shape(ds.train_images, (1438, 8, 8, 1))
  chex.assert_shape(ds.test_images, (359, 8, 8, 1))
  assert ds.num_classes == 10 and ds.source == "digits"
  assert set(np.unique(ds.test_labels)) == set(range(10))

  bunch = load_digits()
  expected_test = []
  for c in range(10):
    members = np.flatnonzero(bunch.target == c)
    num_test = int(len(members) * 0.2 + 0.5)
    expected_test += members[len(members) - num_test :].tolist()
    assert (ds.test_labels == c).sum() == num_test
  expected_test = np.sort(expected_test)
  np.testing.assert_array_equal(ds.test_labels, bunch.target[expected_test])
  np.testing.assert_allclose(
    ds.to_unit_range(ds.test_images)[..., 0],
    bunch.images[expected_test] / 16.0,
    atol=1e-6,
  )

  train_x, *_ = digits.load_digits_split()
  spec = data.DATASETS["digits"]
  np.testing.assert_allclose(spec.mean, [train_x.mean(dtype=float)], rtol=1e-9)
  np.testing.assert_allclose(spec.std, [train_x.std(dtype=float)], rtol=1e-6)
  np.testing.assert_allclose(ds.train_images.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train_images.std(), 1.0, atol=1e-5)
