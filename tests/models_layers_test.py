"""Tests of lowrank_distill.models.layers."""

import re

import chex
import flax.linen as nn
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


def _autodiff_group_norm(x, scale, bias, groups):
  n, h, w, c = x.shape
  grouped = x.reshape(n, h, w, groups, c // groups)
  y = layers._normalize(grouped, (1, 2, 4)).reshape(x.shape)
  return y * scale.reshape(1, 1, 1, c) + bias.reshape(1, 1, 1, c)


def _norm_inputs(c=8):
  keys = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(keys[0], (3, 5, 4, c)) * 1.5 + 0.7
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], (c,))
  bias = 0.2 * jax.random.normal(keys[2], (c,))
  return x, scale, bias


@pytest.mark.parametrize("groups", [8, 4, 1])
def test_group_norm_matches_autodiff_to_second_order(groups):
  x, scale, bias = _norm_inputs()
  weights = jax.random.normal(jax.random.key(6), x.shape)

  def derivatives(norm):
    def loss(x, scale, bias):
      return jnp.sum(jnp.sin(norm(x, scale, bias, groups)) * weights)

    first = jax.grad(loss, argnums=(0, 1, 2))

    def gradient_norm(x, scale, bias):  # what matching or unrolling needs
      return sum(jnp.sum(g**2) for g in first(x, scale, bias))

    @jax.jit
    def all_orders(x, scale, bias):
      return (
        norm(x, scale, bias, groups),
        first(x, scale, bias),
        jax.grad(gradient_norm, argnums=(0, 1, 2))(x, scale, bias),
      )

    return all_orders(x, scale, bias)

  chex.assert_trees_all_close(
    derivatives(layers.group_norm),
    derivatives(_autodiff_group_norm),
    rtol=2e-4,
    atol=2e-5,
  )


def test_group_norm_vmaps_over_parameters_and_inputs():
  x, scale, bias = _norm_inputs()
  xs = jnp.stack([x, 2 * x + 1])
  scales, biases = jnp.stack([scale, 2 * scale]), jnp.stack([bias, -bias])

  def grads(norm):
    def one(x, scale, bias):
      return jax.grad(
        lambda *a: jnp.sum(jnp.tanh(norm(*a, 8))), argnums=(0, 1, 2)
      )(x, scale, bias)

    return jax.jit(jax.vmap(one))(xs, scales, biases)

  chex.assert_trees_all_close(
    grads(layers.group_norm), grads(_autodiff_group_norm), rtol=1e-4, atol=1e-5
  )


def _plain_channel_bias(x, bias):
  return x + bias.reshape(1, 1, 1, -1)


def test_channel_bias_matches_autodiff_to_second_order():
  x, _, bias = _norm_inputs()
  weights = jax.random.normal(jax.random.key(7), x.shape)

  def derivatives(add):
    def loss(x, bias):
      return jnp.sum(jnp.sin(add(x, bias)) * weights)

    def gradient_norm(x, bias):
      return sum(jnp.sum(g**2) for g in jax.grad(loss, (0, 1))(x, bias))

    return jax.jit(
      lambda x, b: (
        add(x, b),
        jax.grad(loss, (0, 1))(x, b),
        jax.grad(gradient_norm, (0, 1))(x, b),
      )
    )(x, bias)

  chex.assert_trees_all_close(
    derivatives(layers.add_channel_bias),
    derivatives(_plain_channel_bias),
    rtol=1e-5,
    atol=1e-6,
  )


_PER_CHANNEL_LAYERS = {  # (written-out backward, autodiff's), on 16 channels
  "group_norm": (
    lambda x, s, b: layers.group_norm(x, s, b, 16),
    lambda x, s, b: _autodiff_group_norm(x, s, b, 16),
  ),
  "channel_bias": (
    lambda x, s, b: layers.add_channel_bias(x, b),
    lambda x, s, b: _plain_channel_bias(x, b),
  ),
}


@pytest.mark.skipif(
  jax.default_backend() != "cpu",
  reason="checks XLA:CPU's compiled backward under the CPU compiler options "
  "(models.compiler_options), which only a CPU-backend run applies",
)
@pytest.mark.parametrize("layer", sorted(_PER_CHANNEL_LAYERS))
def test_backward_sums_each_image_before_the_batch(layer):
  # Autodiff's backward sums the per-channel gradients over (n, h, w) at
  # once, and XLA:CPU splits that reduction into reduce-windows that read
  # the activations at a fraction of the speed of the per-image sums.
  x, scale, bias = _norm_inputs(c=16)
  x = jnp.tile(x, (24, 6, 6, 1))  # [72, 30, 24, 16]: large enough to split

  def hlo(fn):
    def backward(x, scale, bias):
      out, vjp = jax.vjp(fn, x, scale, bias)
      return vjp(jnp.cos(out))

    options = models.compiler_options("canonical")  # YNNPACK off, as there
    lowered = jax.jit(backward).lower(x, scale, bias)
    return lowered.compile(options).as_text()

  over_activations = re.compile(r"reduce-window\(.*window=\{size=\d+x\d+x\d+x")
  written, autodiff = _PER_CHANNEL_LAYERS[layer]
  assert over_activations.search(hlo(autodiff))
  # (Summing the [72, 16] per-image sums may be split: it is tiny.)
  assert not over_activations.search(hlo(written))


@pytest.mark.parametrize(
  "shape,axes",
  [
    ((3, 5, 4, 6), (1, 2)),  # an image's h and w, one axis at a time
    ((3, 5, 4, 6), (0, 1, 2)),  # batch norm's
    ((3, 5, 4, 6), (1, 2, 3)),  # with the minor axis: one reduce
    ((3, 5, 4, 6, 1), (1, 2, 4)),  # the instance norm's grouped view
    ((3, 5, 4, 2, 3), (1, 2, 4)),  # the group norm's
    ((3, 1, 4, 6), (1,)),  # only a size-1 axis
    ((2, 3), (0,)),
  ],
)
def test_sums_equal_numpy_sums(shape, axes):
  x = _normal(shape, seed=4)
  sums = jax.jit(lambda x: layers._sums((x, x * x), axes))(x)
  chex.assert_trees_all_close(
    sums,
    (np.sum(x, axis=axes), np.sum(x * x, axis=axes)),
    atol=1e-5,
    rtol=1e-5,
  )


@pytest.mark.skipif(
  jax.default_backend() != "cpu",
  reason="checks XLA:CPU's compiled program, which only a CPU-backend run "
  "builds",
)
def test_sums_over_an_image_reduce_one_axis_at_a_time():
  x = jnp.zeros((4, 16, 16, 32))
  compiled = (
    jax.jit(lambda x: layers._sums((x, x * x), (1, 2)))
    .lower(x)
    .compile(models.compiler_options("canonical"))
    .as_text()
  )
  reduced = re.findall(r" reduce\(.*?dimensions=\{([\d,]+)\}", compiled)
  assert reduced and all("," not in dims for dims in reduced)


class _Norm(nn.Module):
  kind: str
  train: bool

  @nn.compact
  def __call__(self, y):
    return layers.norm(y, self.kind, train=self.train, name="norm")


@pytest.mark.parametrize("kind", layers.NORMS)
def test_cancels_channel_bias_names_the_norms_that_zero_a_bias_gradient(kind):
  """The premise of `Conv(bias_cancelled=True)`: a per-channel constant
  added before the norm has a zero gradient exactly for the norms named.
  Train mode, but eval mode for batch norm (its nets are matched so), with
  off-centre running statistics."""
  x, dy = _normal((3, 5, 5, 8), seed=2), _normal((3, 5, 5, 8), seed=3)
  norm = _Norm(kind, train=kind != "batch")
  variables = norm.init(jax.random.key(0), x)
  if "batch_stats" in variables:
    variables = {
      **variables,
      "batch_stats": {"norm": {"mean": jnp.full(8, 0.3), "var": jnp.ones(8)}},
    }

  def out(bias):
    return jnp.sum(norm.apply(variables, x + bias.reshape(1, 1, 1, -1)) * dy)

  grad = np.abs(np.asarray(jax.grad(out)(jnp.zeros(8))))
  if layers.cancels_channel_bias(kind):
    assert grad.max() < 1e-5
  else:
    assert grad.max() > 1e-2
