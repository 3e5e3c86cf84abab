"""Tests of lowrank_distill.models.layers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_helpers import _normal

from lowrank_distill import models
from lowrank_distill.models import layers


def test_batch_norm_matches_pytorch_semantics():
  bn = models.BatchNorm()
  x = 3.0 + 2.0 * _normal((4, 3, 3, 2))
  variables = bn.init(jax.random.key(1), x)
  chex.assert_trees_all_equal(
    variables["batch_stats"], {"mean": jnp.zeros(2), "var": jnp.ones(2)}
  )
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  flat = np.asarray(x).reshape(-1, 2)
  np.testing.assert_allclose(
    updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5
  )
  np.testing.assert_allclose(  # running var uses the unbiased variance
    updates["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5
  )
  y = np.asarray(y).reshape(-1, 2)
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(0), 1.0 - 1e-5 / flat.var(0), rtol=1e-4)
  # Train mode without a mutable collection: batch statistics, no update.
  np.testing.assert_allclose(
    np.asarray(bn.apply(variables, x, train=True)).reshape(-1, 2), y, atol=1e-6
  )
  # Eval mode: the running averages.
  stats = updates["batch_stats"]
  y_eval = bn.apply({**variables, **updates}, x)
  expected = (x - stats["mean"].reshape(1, 1, 1, 2)) / jnp.sqrt(
    stats["var"].reshape(1, 1, 1, 2) + 1e-5
  )
  np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)


def test_norm_layers_init_to_identity_affine():
  x = jnp.asarray(_normal((2, 4, 3, 8)))
  layers = {
    "instance": (models.GroupNorm(), (8,)),
    "group": (models.GroupNorm(num_groups=4), (8,)),
    "layer": (models.LayerNorm(), (4, 3, 8)),  # 2*C*H*W params in all
    "batch": (models.BatchNorm(), (8,)),
  }
  for kind, (layer, shape) in layers.items():
    params = layer.init(jax.random.key(0), x)["params"]
    assert set(params) == {"scale", "bias"}, kind
    chex.assert_shape((params["scale"], params["bias"]), shape)
    np.testing.assert_array_equal(params["scale"], 1.0)
    np.testing.assert_array_equal(params["bias"], 0.0)
  # Instance norm: zero mean, unit variance per image and channel.
  y = models.GroupNorm().apply({"params": params}, x)
  np.testing.assert_allclose(jnp.mean(y, axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.var(y, axis=(1, 2)), 1.0, rtol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_one_pass_moments_match_two_pass_even_far_from_zero(offset):
  x = jax.random.normal(jax.random.key(0), (3, 6, 5, 4)) * 0.5 + offset
  mean, var = layers.moments(x, (1, 2))
  x64 = np.asarray(x, np.float64)
  chex.assert_trees_all_close(
    mean, x64.mean((1, 2), keepdims=True), rtol=1e-6, atol=1e-6
  )
  # The variance (0.25) keeps its precision: no E[x^2] - E[x]^2 cancellation.
  chex.assert_trees_all_close(
    var, x64.var((1, 2), keepdims=True), rtol=1e-4, atol=1e-6
  )


def test_avg_pool_floors_like_pytorch():
  x = jnp.arange(2 * 5 * 7 * 3, dtype=jnp.float32).reshape(2, 5, 7, 3)
  pooled = layers.pool(x, "avg")
  chex.assert_shape(pooled, (2, 2, 3, 3))
  expected = np.asarray(x)[:, :4, :6].reshape(2, 2, 2, 3, 2, 3).mean((2, 4))
  chex.assert_trees_all_close(pooled, expected)


def test_moments_derivatives_match_the_two_pass_form_to_second_order():
  x = jax.random.normal(jax.random.key(3), (2, 4, 3, 5)) * 2.0 + 3.0
  v = jax.random.normal(jax.random.key(4), x.shape)

  def two_pass(x):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    return mean, jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)

  def score(fn):
    def f(x):
      mean, var = fn(x)
      return jnp.sum(jnp.sin(mean) * var**1.5)

    grad = jax.grad(f)
    return grad(x), jax.jvp(grad, (x,), (v,))[1]

  chex.assert_trees_all_close(
    score(lambda x: layers.moments(x, (1, 2))),
    score(two_pass),
    rtol=1e-4,
    atol=1e-4,
  )
