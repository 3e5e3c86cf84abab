"""Tests of hallucinators over bases (parameterize.hallucinators, LoHaBa)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_distill import analysis
from lowrank_distill.parameterize import (
  budget,
  hallucinators,
  lowrank_hallucinators,
  registry,
)

MNIST = (28, 28, 1)


def _reference(one, bases):
  """The hallucinator by hand: valid conv, affine, full transposed conv."""
  n, h, w, c = bases.shape
  k = hallucinators.KERNEL_SIZE
  hi, wi = h - k + 1, w - k + 1
  enc = np.zeros((n, hi, wi, c))
  for y in range(hi):
    for x in range(wi):
      patch = bases[:, y : y + k, x : x + k, :]  # [n, k, k, c_in]
      enc[:, y, x] = np.einsum("nijc,ijcd->nd", patch, one["enc_kernel"])
  enc = one["scale"] * (enc + one["enc_bias"]) + one["shift"]
  out = np.zeros((n, h, w, c))
  # Every encoder position spreads back over the k x k window it came from.
  flipped = one["dec_kernel"][::-1, ::-1]
  for y in range(hi):
    for x in range(wi):
      out[:, y : y + k, x : x + k] += np.einsum(
        "nc,ijcd->nijd", enc[:, y, x], flipped
      )
  return out + one["dec_bias"]


def _params(num_hallucinators=3, shape=(6, 5, 2), seed=0):
  params = hallucinators.init_hallucinators(
    jax.random.key(seed), num_hallucinators=num_hallucinators, image_shape=shape
  )
  rng = np.random.default_rng(seed)
  params = jax.tree.map(np.asarray, params)
  params["scale"] = params["scale"] + 0.3 * rng.normal(
    size=params["scale"].shape
  )
  params["shift"] = 0.3 * rng.normal(size=params["shift"].shape)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def test_a_hallucinator_is_conv_affine_transposed_conv():
  params = _params()
  bases = np.random.default_rng(1).normal(size=(4, 6, 5, 2))
  bases = bases.astype(np.float32)
  one = jax.tree.map(lambda x: x[1], params)
  np.testing.assert_allclose(
    hallucinators.hallucinate(one, jnp.asarray(bases)),
    _reference(one, bases),
    atol=1e-4,
  )


def test_images_are_ordered_basis_major_hallucinator_minor():
  params = _params(num_hallucinators=3)
  params = {
    **jax.tree.map(np.zeros_like, params),
    "dec_bias": np.repeat(np.arange(3.0, dtype=np.float32)[:, None], 2, 1),
  }
  bases = np.random.default_rng(2).normal(size=(4, 6, 5, 2))
  images = np.asarray(hallucinators.apply_all(params, jnp.asarray(bases)))
  chex.assert_shape(images, (12, 6, 5, 2))
  for index in range(12):
    np.testing.assert_array_equal(images[index], index % 3)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_bad_hallucinator_counts_name_the_field(value):
  with pytest.raises(ValueError, match="synset.num_hallucinators"):
    hallucinators.check_num_hallucinators(value)


def test_images_per_class_must_be_a_multiple_and_images_big_enough():
  with pytest.raises(ValueError, match="multiple of synset.num_hallucinators"):
    hallucinators.init(
      jax.random.key(0),
      num_classes=2,
      images_per_class=5,
      image_shape=(6, 6, 1),
      num_hallucinators=2,
    )
  with pytest.raises(ValueError, match="at least 3x3"):
    registry.validate(
      "hallucinators", image_shape=(2, 8, 1), num_hallucinators=2
    )


def test_real_bases_are_the_first_images_of_each_class():
  real = np.random.default_rng(3).normal(size=(2, 4, 6, 6, 1))
  real = real.astype(np.float32)
  params = hallucinators.init(
    jax.random.key(0),
    num_classes=2,
    images_per_class=4,
    image_shape=(6, 6, 1),
    method="real",
    real_images=real,
    num_hallucinators=2,
  )
  np.testing.assert_array_equal(
    hallucinators.bases(params), real[:, :2].reshape(4, 6, 6, 1)
  )
  low = lowrank_hallucinators.init(
    jax.random.key(0),
    num_classes=2,
    images_per_class=4,
    image_shape=(6, 6, 1),
    method="real",
    real_images=real,
    num_hallucinators=2,
    rank=6,
  )
  np.testing.assert_allclose(
    lowrank_hallucinators.bases(low), real[:, :2].reshape(4, 6, 6, 1), atol=1e-4
  )
  chex.assert_trees_all_equal(low["hallucinators"], params["hallucinators"])


def test_storage_counts_bases_and_hallucinators():
  per_hallucinator = 2 * (9 + 1) + 2 * 26 * 26
  assert (
    budget.storage_floats(
      "hallucinators",
      num_classes=10,
      images_per_class=10,
      image_shape=MNIST,
      num_hallucinators=5,
    )
    == 10 * 2 * 784 + 5 * per_hallucinator
  )
  assert (
    budget.storage_floats(
      "lowrank_hallucinators",
      num_classes=10,
      images_per_class=8,
      image_shape=MNIST,
      num_hallucinators=2,
      rank=2,
    )
    == 10 * 4 * 2 * 56 + 2 * per_hallucinator
  )


def test_same_memory_budgets():
  # MNIST IPC 1 (7,840 floats): 5 hallucinators cost 6,860, too much for
  # one full basis per class; 2 hallucinators leave 5,096 for rank-2 bases
  # of 112 floats: 4 per class, 8 images.
  with pytest.raises(ValueError, match="hallucinators 5"):
    budget.images_per_class(
      "hallucinators",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_hallucinators=5,
    )
  assert (
    budget.images_per_class(
      "lowrank_hallucinators",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_hallucinators=2,
      rank=2,
    )
    == 8
  )
  assert (
    budget.images_per_class(
      "hallucinators",
      budget="same-memory",
      ipc=2,
      num_classes=10,
      image_shape=MNIST,
      num_hallucinators=5,
    )
    == 5
  )
  table = budget.budget_table(
    budget.plan(
      "hallucinators",
      budget="same-images",
      ipc=1,
      num_classes=10,
      image_shape=MNIST,
      num_hallucinators=5,
    )
  )
  assert "hallucinators" in table.splitlines()[0]


@pytest.mark.parametrize("param", ["hallucinators", "lowrank_hallucinators"])
def test_the_components_drawn_are_the_bases(param, tmp_path):
  module = registry.get(param)
  params = module.init(
    jax.random.key(0),
    num_classes=2,
    images_per_class=4,
    image_shape=(6, 6, 1),
    num_hallucinators=2,
    **({"rank": 2} if param == "lowrank_hallucinators" else {}),
  )
  comps, nrow = analysis.rank_one_components(
    param, jax.tree.map(np.asarray, params)
  )
  chex.assert_shape(comps, (4, 6, 6, 1))
  assert nrow == 4
  assert analysis.save_components(tmp_path / "b.png", param, params).exists()
