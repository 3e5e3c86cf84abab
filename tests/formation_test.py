"""Tests of multi-formation (lowrank_distill.parameterize.formation)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from lowrank_distill import parameterize
from lowrank_distill.parameterize import budget, formation, registry

KINDS = {
  "pixels": {},
  "factors": {"rank": 2},
  "mappers": {"rank": 2, "num_sets": 2},
}


def _bilinear_up(block, size):
  """Reference bilinear resize by hand: half-pixel centres, edges clamped."""
  h_in, w_in = block.shape[:2]
  h, w = size

  def weights(n_out, n_in):
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m

  rows, cols = weights(h, h_in), weights(w, w_in)
  return np.einsum("ih,hwc,jw->ijc", rows, block, cols)


@pytest.mark.parametrize("factor", [1, 2, 3, 6])
def test_check_factor_accepts_divisors(factor):
  assert formation.check_factor(factor, (6, 12, 1)) == factor


@pytest.mark.parametrize("factor", [0, -2, 4, 5, 2.0, True, None, "2"])
def test_check_factor_refuses_with_the_field_and_the_divisors(factor):
  with pytest.raises(ValueError, match=r"synset.formation .*\[1, 2, 3, 6\]"):
    formation.check_factor(factor, (6, 12, 1))


def test_stored_per_class_needs_a_multiple_of_the_square():
  assert formation.stored_per_class(8, 2) == 2
  assert formation.stored_per_class(9, 3) == 1
  for bad in (0, 6):
    with pytest.raises(ValueError, match="multiple of formation\\*\\*2 = 4"):
      formation.stored_per_class(bad, 2)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("factor", [2, 3])
def test_form_is_each_block_upsampled_in_order(factor, c):
  stored = np.random.default_rng(0).normal(size=(2, 6, 6, c)).astype(np.float32)
  formed = np.asarray(formation.form(jnp.asarray(stored), factor=factor))
  chex.assert_shape(formed, (2 * factor**2, 6, 6, c))
  s = 6 // factor
  for j in range(2):
    for i in range(factor):
      for k in range(factor):
        block = stored[j, i * s : (i + 1) * s, k * s : (k + 1) * s]
        np.testing.assert_allclose(
          formed[j * factor**2 + i * factor + k],
          _bilinear_up(block, (6, 6)),
          atol=1e-5,
        )


def test_form_and_tile_at_factor_one_are_the_identity():
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  assert formation.form(x, factor=1) is x
  assert formation.tile(x, factor=1) is x


def test_tile_puts_each_image_averaged_into_its_block():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(8, 6, 4, 3)).astype(np.float32)
  stored = np.asarray(formation.tile(jnp.asarray(images), factor=2))
  chex.assert_shape(stored, (2, 6, 4, 3))
  for t in range(8):
    j, b = divmod(t, 4)
    i, k = divmod(b, 2)
    pooled = images[t].reshape(3, 2, 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(
      stored[j, i * 3 : (i + 1) * 3, k * 2 : (k + 1) * 2], pooled, atol=1e-6
    )


def test_form_of_tile_gives_back_images_constant_on_blocks():
  # An image constant everywhere survives downsampling and upsampling.
  values = np.arange(8, dtype=np.float32)
  images = np.broadcast_to(values[:, None, None, None], (8, 6, 6, 1))
  back = formation.form(formation.tile(jnp.asarray(images), factor=2), factor=2)
  np.testing.assert_allclose(back, images, atol=1e-6)


def _formed(name, factor=2):
  return registry.reconstructor(name, formation=factor)


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("shape", [(6, 6, 1), (6, 4, 3)])
@pytest.mark.parametrize("method", ["noise", "real"])
def test_formed_init_stores_a_quarter_and_materializes_all(name, shape, method):
  real = np.random.default_rng(0).normal(size=(3, 8, *shape))
  recon = _formed(name)
  params = recon.init(
    jax.random.key(0),
    num_classes=3,
    images_per_class=8,
    image_shape=shape,
    method=method,
    real_images=real.astype(np.float32) if method == "real" else None,
    **KINDS[name],
  )
  inner = parameterize.get(name).materialize(params)
  chex.assert_shape(inner, (3 * 2, *shape))
  chex.assert_shape(recon.materialize(params), (3 * 8, *shape))
  chex.assert_trees_all_equal(recon.stored_images(params), inner)


def test_formed_pixels_real_init_forms_the_tiled_real_images():
  real = np.random.default_rng(2).normal(size=(2, 4, 6, 6, 1))
  real = real.astype(np.float32)
  recon = _formed("pixels")
  params = recon.init(
    jax.random.key(0),
    num_classes=2,
    images_per_class=4,
    image_shape=(6, 6, 1),
    method="real",
    real_images=real,
  )
  expected = formation.tile(jnp.asarray(real.reshape(8, 6, 6, 1)), factor=2)
  chex.assert_trees_all_close(params["images"], expected)


def test_formed_init_refuses_images_per_class_not_a_multiple():
  with pytest.raises(ValueError, match="multiple of formation"):
    _formed("pixels").init(
      jax.random.key(0),
      num_classes=2,
      images_per_class=6,
      image_shape=(6, 6, 1),
    )


def test_reconstructor_at_formation_one_is_the_kind_itself():
  for name in KINDS:
    assert registry.reconstructor(name) is parameterize.get(name)
    assert registry.reconstructor(name, formation=1) is parameterize.get(name)


def test_validate_refuses_a_formation_that_does_not_divide():
  with pytest.raises(ValueError, match="synset.formation"):
    registry.validate("pixels", image_shape=(28, 28, 1), formation=3)
  registry.validate("factors", image_shape=(28, 28, 1), rank=2, formation=2)


@pytest.mark.parametrize("name", list(KINDS))
def test_check_grads_of_formed_materialize(name):
  recon = _formed(name)
  params = recon.init(
    jax.random.key(1),
    num_classes=2,
    images_per_class=4,
    image_shape=(4, 4, 1),
    **KINDS[name],
  )
  # float32 finite differences: on an Intel Xeon the mappers' projection
  # differed by 0.28 % (check_grads' default tolerance 0.2 %; AMD EPYC
  # passed). A wrong gradient is off by far more.
  jtu.check_grads(
    recon.materialize, (params,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2
  )


@pytest.mark.parametrize("name", list(KINDS))
def test_gradient_reaches_every_stored_float(name):
  recon = _formed(name)
  params = recon.init(
    jax.random.key(3),
    num_classes=2,
    images_per_class=4,
    image_shape=(4, 4, 3),
    **KINDS[name],
  )
  weights = jax.random.normal(jax.random.key(4), (2 * 4, 4, 4, 3))
  grads = jax.grad(lambda p: jnp.sum(recon.materialize(p) * weights))(params)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.asarray(leaf) != 0)


def test_storage_counts_stored_images_and_a_label_per_training_image():
  shape = (28, 28, 1)
  assert (
    budget.storage_floats(
      "pixels",
      num_classes=10,
      images_per_class=4,
      image_shape=shape,
      formation=2,
    )
    == 10 * 28 * 28
  )
  assert (
    budget.storage_floats(
      "factors",
      num_classes=10,
      images_per_class=28,
      image_shape=shape,
      rank=2,
      soft_labels=True,
      formation=2,
    )
    == 10 * 7 * 2 * (28 + 28) + 10 * 28 * 10
  )


def test_same_memory_budgets_with_formation():
  shape = (28, 28, 1)
  # IDC: one stored image per class, four training images.
  assert (
    budget.images_per_class(
      "pixels",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=shape,
      formation=2,
    )
    == 4
  )
  # LoIDC: floor(784 / (2 * 56)) = 7 stored rank-2 images, 28 training.
  assert (
    budget.images_per_class(
      "factors",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=shape,
      rank=2,
      formation=2,
    )
    == 28
  )
  # With soft labels a stored image costs 112 + 4 * 10 floats: 5 fit.
  assert (
    budget.images_per_class(
      "factors",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=shape,
      rank=2,
      formation=2,
      soft_labels=True,
    )
    == 20
  )
  assert (
    budget.images_per_class(
      "pixels",
      budget="same-images",
      ipc=3,
      num_classes=10,
      image_shape=shape,
      formation=2,
    )
    == 12
  )


def test_same_memory_refuses_when_no_stored_image_fits():
  with pytest.raises(ValueError, match="formation 2"):
    budget.images_per_class(
      "pixels",
      budget="same-memory",
      ipc=1,
      num_classes=10,
      image_shape=(8, 8, 1),
      formation=2,
      soft_labels=True,
    )


def test_plan_records_the_formation_and_the_table_shows_it():
  b = budget.plan(
    "factors",
    budget="same-memory",
    ipc=1,
    num_classes=10,
    image_shape=(28, 28, 1),
    rank=2,
    formation=2,
  )
  assert (b.formation, b.images_per_class, b.floats_used) == (2, 28, 7840)
  header, row = budget.budget_table(b).splitlines()
  assert "formation" in header and " 2 " in row
  plain = budget.plan(
    "pixels", budget="same-images", ipc=1, num_classes=2, image_shape=(4, 4, 1)
  )
  assert plain.formation == 1
  assert "formation" not in budget.budget_table(plain)
