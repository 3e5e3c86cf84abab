"""Tests of the DM objective (objectives.distribution_matching)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lowrank_distill import models, parameterize
from lowrank_distill.objectives import distribution_matching as dm

STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _model(name="convnet"):
  return models.create(
    name, num_classes=3, image_shape=(8, 8, 1), width=8, depth=2
  )


@pytest.mark.parametrize("name", ["convnet", "convnet_bn"])
def test_loss_is_zero_when_synthetic_equals_real(name):
  real = jax.random.normal(jax.random.key(0), (3, 5, 8, 8, 1))
  loss = dm.loss(
    jax.random.key(1), real, real, model=_model(name), dsa_strategy=STRATEGY
  )
  # Real and synthetic embeddings are computed by separate XLA ops.
  assert abs(float(loss)) < 1e-10


def test_loss_is_positive_for_different_sets_and_sums_classes():
  real = jax.random.normal(jax.random.key(0), (3, 5, 8, 8, 1))
  syn = jax.random.normal(jax.random.key(2), (3, 2, 8, 8, 1))
  model = _model()
  key = jax.random.key(1)
  total = dm.loss(key, syn, real, model=model, dsa_strategy="none")
  assert float(total) > 0.0
  in_parallel = dm.loss(
    key, syn, real, model=model, dsa_strategy="none", classes_in_parallel=3
  )
  np.testing.assert_allclose(float(total), float(in_parallel), rtol=1e-5)


@pytest.mark.parametrize(
  "param,kwargs",
  [
    ("pixels", {}),
    ("factors", {"rank": 2}),
    ("mappers", {"rank": 2, "num_sets": 2}),
  ],
)
def test_gradient_reaches_every_reconstructor_parameter(param, kwargs):
  reconstructor = parameterize.get(param)
  params = reconstructor.init(
    jax.random.key(0),
    num_classes=3,
    images_per_class=2,
    image_shape=(8, 8, 1),
    **kwargs,
  )
  real = jax.random.normal(jax.random.key(1), (3, 6, 8, 8, 1))
  model = _model()

  def loss(params):
    syn = reconstructor.materialize(params).reshape(3, 2, 8, 8, 1)
    return dm.loss(
      jax.random.key(2), syn, real, model=model, dsa_strategy=STRATEGY
    )

  grads = jax.jit(jax.grad(loss))(params)
  chex.assert_tree_all_finite(grads)
  for name, g in grads.items():
    assert float(jnp.abs(g).sum()) > 0.0, f"no gradient reaches {name}"


class LossVariantsTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_loss_agrees_jitted_and_eager_with_dsa(self):
    real = jax.random.normal(jax.random.key(0), (3, 4, 8, 8, 1))
    syn = jax.random.normal(jax.random.key(2), (3, 2, 8, 8, 1))
    model = _model()

    @self.variant
    def loss(syn, real):
      return dm.loss(
        jax.random.key(1),
        syn,
        real,
        model=model,
        dsa_strategy="color_crop_cutout_scale_rotate",
      )

    value = loss(syn, real)
    chex.assert_shape(value, ())
    chex.assert_tree_all_finite(value)
    assert float(value) > 0.0
    # The same key gives the same augmentation: the set against itself is 0.
    np.testing.assert_allclose(float(loss(real, real)), 0.0, atol=1e-9)


def _embeddings(seed, n, d=6, shift=0.0):
  return jax.random.normal(jax.random.key(seed), (n, d)) + shift


def test_a_wide_gaussian_kernel_tends_to_the_mean_distance():
  real, syn = _embeddings(0, 20), _embeddings(1, 4, shift=0.5)
  mean = dm.embedding_distance(real, syn)
  np.testing.assert_allclose(
    float(mean), float(jnp.sum((real.mean(0) - syn.mean(0)) ** 2)), rtol=1e-6
  )
  wide = dm.embedding_distance(real, syn, mmd_width=1e3)
  np.testing.assert_allclose(float(wide), float(mean), rtol=1e-2)
  narrow = dm.embedding_distance(real, syn, mmd_width=0.5)
  assert abs(float(narrow) - float(mean)) > 0.05 * float(mean)


def test_the_mmd_sees_a_spread_the_means_cannot():
  real = _embeddings(0, 50)
  mean = real.mean(0, keepdims=True)
  # Both sets have the real mean: collapsed onto it, or spread as ten real
  # rows moved to it. The means cannot tell them apart; the MMD can.
  syn = jnp.tile(mean, (10, 1))
  spread = real[:10] - real[:10].mean(0, keepdims=True) + mean
  assert float(dm.embedding_distance(real, syn)) < 1e-10
  assert float(dm.embedding_distance(real, spread)) < 1e-10
  collapsed = dm.embedding_distance(real, syn, mmd_width=1.0)
  spread = dm.embedding_distance(real, spread, mmd_width=1.0)
  assert float(collapsed) > 2.0 * float(spread) > 0.0
  grads = jax.grad(lambda s: dm.embedding_distance(real, s, mmd_width=1.0))(syn)
  # The gradient pushes the collapsed rows apart.
  assert float(jnp.abs(grads).sum()) > 0.0


def test_the_mmd_loss_is_zero_for_the_same_set_and_reaches_the_images():
  real = jax.random.normal(jax.random.key(0), (3, 5, 8, 8, 1))
  model = _model()
  same = dm.loss(
    jax.random.key(1),
    real,
    real,
    model=model,
    dsa_strategy=STRATEGY,
    mmd_width=1.0,
  )
  assert abs(float(same)) < 1e-6
  syn = jax.random.normal(jax.random.key(2), (3, 2, 8, 8, 1))
  grads = jax.grad(
    lambda s: dm.loss(
      jax.random.key(1),
      s,
      real,
      model=model,
      dsa_strategy="none",
      mmd_width=1.0,
    )
  )(syn)
  chex.assert_tree_all_finite(grads)
  assert float(jnp.abs(grads).sum()) > 0.0


def test_given_variables_are_the_network_that_embeds():
  real = jax.random.normal(jax.random.key(0), (3, 5, 8, 8, 1))
  syn = jax.random.normal(jax.random.key(2), (3, 2, 8, 8, 1))
  model = _model()
  key = jax.random.key(1)
  net_key, _ = jax.random.split(key)
  drawn = dm.loss(key, syn, real, model=model, dsa_strategy="none")
  given = dm.loss(
    key,
    syn,
    real,
    model=model,
    dsa_strategy="none",
    variables=model.init(net_key, real[0, :1]),
  )
  other = dm.loss(
    key,
    syn,
    real,
    model=model,
    dsa_strategy="none",
    variables=model.init(jax.random.key(9), real[0, :1]),
  )
  np.testing.assert_allclose(float(given), float(drawn), rtol=1e-6)
  assert abs(float(other) - float(drawn)) > 1e-3 * float(drawn)
