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
