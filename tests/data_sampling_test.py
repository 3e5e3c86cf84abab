"""Tests of lowrank_distill.data.sampling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from lowrank_distill import data


def _labels():
  # Class sizes 5, 3, 8, 4: class 1 is the smallest.
  return np.array([0] * 5 + [1] * 3 + [2] * 8 + [3] * 4)[
    np.random.default_rng(0).permutation(20)
  ]


class SamplingTest(chex.TestCase, parameterized.TestCase):
  def test_class_index_table(self):
    labels = _labels()
    index = data.class_index(labels, 5)
    chex.assert_shape(index.table, (5, 8))
    np.testing.assert_array_equal(index.counts, [5, 3, 8, 4, 0])
    for c in range(4):
      members = np.asarray(index.table[c, : index.counts[c]])
      np.testing.assert_array_equal(members, np.flatnonzero(labels == c))

  @chex.variants(with_jit=True, without_jit=True)
  def test_sample_per_class(self):
    labels = _labels()
    index = data.class_index(labels, 4)
    sample = self.variant(lambda k, i: data.sample_per_class(k, i, n=3))
    idx = np.asarray(sample(jax.random.key(0), index))
    chex.assert_shape(idx, (4, 3))
    assert idx.dtype == np.int32
    for c in range(4):
      np.testing.assert_array_equal(labels[idx[c]], c)
      assert len(set(idx[c].tolist())) == 3  # without replacement
    same = np.asarray(sample(jax.random.key(0), index))
    other = np.asarray(sample(jax.random.key(1), index))
    np.testing.assert_array_equal(idx, same)
    assert not np.array_equal(idx, other)

  @chex.variants(with_jit=True, without_jit=True)
  def test_whole_class_is_a_permutation(self):
    labels = _labels()
    index = data.class_index(labels, 4)
    idx = self.variant(lambda k: data.sample_class(k, index, 1, n=3))(
      jax.random.key(3)
    )
    self.assertCountEqual(np.asarray(idx).tolist(), np.flatnonzero(labels == 1))

  def test_vmap_over_keys_and_traced_class(self):
    labels = _labels()
    index = data.class_index(labels, 4)
    keys = jax.random.split(jax.random.key(0), 300)
    draws = jax.jit(
      jax.vmap(lambda k, c: data.sample_class(k, index, c, n=2)),
    )(keys, jnp.full((300,), 2, jnp.int32))
    chex.assert_shape(draws, (300, 2))
    draws = np.asarray(draws)
    assert (labels[draws] == 2).all()
    assert (draws[:, 0] != draws[:, 1]).all()
    # Every member of the class gets drawn: the subsets really vary.
    self.assertCountEqual(np.unique(draws), np.flatnonzero(labels == 2))
    first = np.bincount(draws[:, 0], minlength=20)[labels == 2]
    assert first.min() > 300 / 8 / 3  # roughly uniform (expected 37.5)

  def test_check_images_per_class(self):
    labels = _labels()
    data.check_images_per_class(labels, 3)
    data.check_images_per_class(data.class_index(labels, 4), 3, field="x")
    with self.assertRaisesRegex(
      ValueError, r"distill.batch_real=4 exceeds .* class 1, which has 3"
    ):
      data.check_images_per_class(labels, 4, field="distill.batch_real")
    with self.assertRaisesRegex(ValueError, r"ipc=1 exceeds .* class 4.* 0"):
      data.check_images_per_class(data.class_index(labels, 5), 1)
    with self.assertRaisesRegex(ValueError, r"ipc=1 exceeds .* class 4"):
      data.check_images_per_class(labels, 1, num_classes=5)
    with self.assertRaisesRegex(ValueError, "ipc must be >= 1"):
      data.check_images_per_class(labels, 0)
