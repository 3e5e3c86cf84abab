"""Helpers shared by the tests of lowrank_distill.models."""

import jax
import jax.numpy as jnp
import numpy as np

TINY = {"width": 8, "depth": 2}


def _abstract_variables(model, shape, batch=2):
  x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x), x


def _random_variables(model, shape, seed=0):
  """Variables with the init's structure filled from numpy (no jitted RNG,
  whose XLA:CPU compile costs about a second per program)."""
  rng = np.random.default_rng(seed)
  abstract, _ = _abstract_variables(model, shape, batch=1)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "var" in name:
      return np.asarray(rng.uniform(0.5, 2.0, leaf.shape), np.float32)
    return np.asarray(0.3 * rng.normal(size=leaf.shape), np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _normal(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _assert_close(actual, desired, tol=1e-5):
  """Agreement to `tol` relative to each array's largest magnitude."""
  for a, d in zip(
    jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True
  ):
    a, d = np.asarray(a), np.asarray(d)
    assert a.shape == d.shape
    scale = max(1.0, float(np.abs(d).max()))
    np.testing.assert_allclose(a, d, rtol=0, atol=tol * scale)
