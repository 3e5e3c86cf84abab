"""Tests of addressable memories (parameterize.memories, lowrank_memories)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_distill import analysis
from lowrank_distill.parameterize import budget, lowrank_memories, memories

MNIST = (28, 28, 1)


def _images(n=6, shape=(5, 4, 2), seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, *shape)).astype(np.float32)


@pytest.mark.parametrize("num_bases", [0, -1, 2.0, True, None])
def test_bad_num_bases_names_the_field(num_bases):
  with pytest.raises(ValueError, match="synset.num_bases must be an integer"):
    memories.check_num_bases(num_bases)


def test_svd_memories_with_as_many_bases_as_images_rebuild_them():
  images = _images()
  params = memories.svd_memories(images, num_bases=6, key=jax.random.key(0))
  chex.assert_shape(params["bases"], (6, 5, 4, 2))
  chex.assert_shape(params["addresses"], (6, 6))
  np.testing.assert_allclose(memories.materialize(params), images, atol=1e-4)


def test_svd_memories_with_fewer_bases_are_the_best_rank_k_fit():
  images = _images(n=8)
  params = memories.svd_memories(images, num_bases=3, key=jax.random.key(0))
  flat = images.reshape(8, -1).astype(np.float64)
  u, s, vt = np.linalg.svd(flat, full_matrices=False)
  best = (u[:, :3] * s[:3]) @ vt[:3]
  np.testing.assert_allclose(
    np.asarray(memories.materialize(params)).reshape(8, -1), best, atol=1e-4
  )


def test_spare_bases_are_orthogonal_to_the_set_and_their_addresses_learn():
  images = _images(n=3)
  params = memories.svd_memories(images, num_bases=5, key=jax.random.key(0))
  np.testing.assert_allclose(memories.materialize(params), images, atol=1e-4)
  np.testing.assert_array_equal(params["addresses"][:, 3:], 0.0)
  spare = np.asarray(params["bases"][3:]).reshape(2, -1)
  assert np.all(np.linalg.norm(spare, axis=1) > 0.1)
  np.testing.assert_allclose(
    images.reshape(3, -1) @ spare.T, np.zeros((3, 2)), atol=1e-4
  )
  weights = jax.random.normal(jax.random.key(0), images.shape)
  grads = jax.grad(lambda p: jnp.sum(memories.materialize(p) * weights))(params)
  assert np.all(np.asarray(grads["addresses"][:, 3:]) != 0)


def test_noise_init_has_unit_pixel_variance():
  for module, kwargs in (
    (memories, {}),
    (lowrank_memories, {"rank": 4}),
  ):
    params = module.init(
      jax.random.key(0),
      num_classes=10,
      images_per_class=40,
      image_shape=(16, 16, 1),
      num_bases=8,
      **kwargs,
    )
    images = np.asarray(module.materialize(params))
    assert 0.8 < images.var() < 1.25, module.__name__


def test_lowrank_bases_have_rank_r_and_full_rank_matches_memories():
  real = _images(n=6, shape=(6, 6, 1)).reshape(2, 3, 6, 6, 1)
  kwargs = dict(
    num_classes=2,
    images_per_class=3,
    image_shape=(6, 6, 1),
    method="real",
    real_images=real,
    num_bases=4,
  )
  low = lowrank_memories.init(jax.random.key(0), rank=2, **kwargs)
  chex.assert_shape(low["a"], (4, 1, 6, 2))
  chex.assert_shape(low["b"], (4, 1, 2, 6))
  for basis in np.asarray(lowrank_memories.bases(low))[..., 0]:
    assert np.linalg.matrix_rank(basis, tol=1e-4) <= 2
  full = lowrank_memories.init(jax.random.key(0), rank=6, **kwargs)
  chex.assert_trees_all_close(
    lowrank_memories.materialize(full),
    memories.materialize(memories.init(jax.random.key(0), **kwargs)),
    atol=1e-4,
  )


def test_storage_is_the_bases_and_one_address_per_image():
  assert (
    budget.storage_floats(
      "memories",
      num_classes=10,
      images_per_class=7,
      image_shape=MNIST,
      num_bases=5,
    )
    == 5 * 784 + 70 * 5
  )
  assert (
    budget.storage_floats(
      "lowrank_memories",
      num_classes=10,
      images_per_class=7,
      image_shape=MNIST,
      num_bases=16,
      rank=2,
      soft_labels=True,
    )
    == 16 * 2 * 56 + 70 * 16 + 70 * 10
  )


def test_same_memory_budgets():
  # MNIST IPC 1: 7,840 floats. 5 full bases leave 3,920 for addresses of
  # 5 floats: 78 images per class; 16 rank-2 bases leave 6,048: 37.
  assert (
    budget.images_per_class(
      "memories",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_bases=5,
    )
    == 78
  )
  assert (
    budget.images_per_class(
      "lowrank_memories",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_bases=16,
      rank=2,
    )
    == 37
  )
  with pytest.raises(ValueError, match="num_bases 16"):
    budget.images_per_class(
      "memories",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_bases=16,
    )
  table = budget.budget_table(
    budget.plan(
      "memories",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_bases=5,
    )
  )
  assert "bases" in table.splitlines()[0]


@pytest.mark.parametrize("param", ["memories", "lowrank_memories"])
def test_the_components_drawn_are_the_bases(param, tmp_path):
  module = {"memories": memories, "lowrank_memories": lowrank_memories}[param]
  params = module.init(
    jax.random.key(0),
    num_classes=2,
    images_per_class=2,
    image_shape=(6, 6, 1),
    num_bases=3,
    **({"rank": 2} if param == "lowrank_memories" else {}),
  )
  comps, nrow = analysis.rank_one_components(
    param, jax.tree.map(np.asarray, params)
  )
  chex.assert_shape(comps, (3, 6, 6, 1))
  assert nrow == 3 and comps.min() >= 0 and comps.max() <= 1
  assert analysis.save_components(tmp_path / "b.png", param, params).exists()


def test_addresses_are_drawn_one_row_per_image_classes_apart(tmp_path):
  from PIL import Image

  addresses = np.array([[1.0, -2.0, 0.0], [0.5, 0.0, 2.0]] * 2)
  path = analysis.save_addresses(
    tmp_path / "a.png", addresses, images_per_class=2, cell=4
  )
  picture = np.asarray(Image.open(path))
  assert picture.shape == (4 * 4 + 1, 3 * 4)
  assert picture[0, 4] == 0 and picture[4, 8] == 255  # -2 and +2
  assert picture[0, 8] == 128  # 0: mid grey
  np.testing.assert_array_equal(picture[8], 255)  # the line between classes
