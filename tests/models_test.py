"""Tests of the networks themselves (lowrank_distill.models.classic, .convnet).

Shapes, parameter counts against PyTorch, the forward pass, BatchNorm
statistics and initialisation, through `models.create`. The building blocks
have their own modules: models_conv_test.py, models_layers_test.py and
models_registry_test.py.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_helpers import (
  TINY,
  _abstract_variables,
  _assert_close,
  _normal,
  _random_variables,
)

from lowrank_distill import models

CORE = (
  "convnet",
  "convnet_bn",
  "lenet",
  "alexnet",
  "alexnet_bn",
  "vgg11",
  "vgg11_bn",
  "resnet18",
  "resnet18_bn",
  "resnet18_bn_ap",
  "mlp",
)


SHAPES = ((28, 28, 1), (32, 32, 3), (8, 8, 1))


# Architectures whose feature maps vanish on 8x8 inputs (LeNet's second 5x5
# conv sees a 2x2 map; VGG11's five max-pools need at least 32x32).
UNSUPPORTED = {
  ("lenet", (8, 8, 1)),
  ("vgg11", (8, 8, 1)),
  ("vgg11_bn", (8, 8, 1)),
}


# Width of `embed` for the default options, by (name family, shape).
EMBED_DIM = {
  "convnet": {(28, 28, 1): 2048, (32, 32, 3): 2048, (8, 8, 1): 128},
  "lenet": {(28, 28, 1): 84, (32, 32, 3): 84},
  "alexnet": {(28, 28, 1): 3072, (32, 32, 3): 3072, (8, 8, 1): 192},
  "vgg11": {(28, 28, 1): 512, (32, 32, 3): 512},
  "resnet18": {(28, 28, 1): 512, (32, 32, 3): 512, (8, 8, 1): 512},
  # The whole last map: 3x3x512 (28 -> 14 -> 7 -> 3), 4x4x512, 1x1x512.
  "resnet18_bn_ap": {(28, 28, 1): 4608, (32, 32, 3): 8192, (8, 8, 1): 512},
  "mlp": {(28, 28, 1): 128, (32, 32, 3): 128, (8, 8, 1): 128},
}


# Trainable parameter counts of the PyTorch reference networks with 10
# classes, from `python benchmarks/torch_models.py counts` (torch 2.13,
# the networks of the DC/DSA/DM `networks.py` reimplemented there).
TORCH_PARAM_COUNTS = {
  "convnet": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_bn": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_ln": {(28, 28, 1): 661002, (32, 32, 3): 663306},
  "convnet_gn": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_nn": {(28, 28, 1): 316938, (32, 32, 3): 319242},
  "convnet_mp": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_np": {(28, 28, 1): 1607946, (32, 32, 3): 1610250},
  "convnet_as": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_al": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_d1": {(28, 28, 1): 329226, (32, 32, 3): 331530},
  "convnet_d2": {(28, 28, 1): 231306, (32, 32, 3): 233610},
  "convnet_d3": {(28, 28, 1): 317706, (32, 32, 3): 320010},
  "convnet_d4": {(28, 28, 1): 450186, (32, 32, 3): 452490},
  "mlp": {(28, 28, 1): 118282, (32, 32, 3): 411146},
  "lenet": {(28, 28, 1): 61706, (32, 32, 3): 62006},
  "alexnet": {(28, 28, 1): 1865802, (32, 32, 3): 1872202},
  "alexnet_bn": {(28, 28, 1): 1867722, (32, 32, 3): 1874122},
  "vgg11": {(28, 28, 1): 9229962, (32, 32, 3): 9231114},
  "vgg11_bn": {(28, 28, 1): 9229962, (32, 32, 3): 9231114},
  "resnet18": {(28, 28, 1): 11172810, (32, 32, 3): 11173962},
  "resnet18_bn": {(28, 28, 1): 11172810, (32, 32, 3): 11173962},
  "resnet18_bn_ap": {(28, 28, 1): 11213770, (32, 32, 3): 11250762},
}


def _family(name):
  return name.removesuffix("_bn")


def _num_params(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _leaf_dicts(tree, path=()):
  """(path, dict) for every dict of arrays (one layer's variables)."""
  if all(not isinstance(v, dict) for v in tree.values()):
    return [(path, tree)]
  return [item for k, v in tree.items() for item in _leaf_dicts(v, (*path, k))]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", CORE)
def test_logits_and_embed_shapes(name, shape):
  if (name, shape) in UNSUPPORTED:
    with pytest.raises(ValueError, match="cannot take images of shape"):
      models.create(name, num_classes=10, image_shape=shape)
    return
  model = models.create(name, num_classes=10, image_shape=shape)
  variables, x = _abstract_variables(model, shape)
  logits = jax.eval_shape(model.apply, variables, x)
  feats = jax.eval_shape(
    lambda v, x: model.apply(v, x, method="embed"), variables, x
  )
  chex.assert_shape(logits, (2, 10))
  chex.assert_shape(feats, (2, EMBED_DIM[_family(name)][shape]))
  assert logits.dtype == feats.dtype == jnp.float32


@pytest.mark.parametrize(
  "name,shape", [(n, s) for n, d in TORCH_PARAM_COUNTS.items() for s in d]
)
def test_parameter_counts_equal_pytorch_reference(name, shape):
  model = models.create(name, num_classes=10, image_shape=shape)
  variables, _ = _abstract_variables(model, shape, batch=1)
  assert _num_params(variables["params"]) == TORCH_PARAM_COUNTS[name][shape]


def test_resnet18_bn_ap_has_the_reference_count_on_cifar100():
  model = models.create(
    "resnet18_bn_ap", num_classes=100, image_shape=(32, 32, 3)
  )
  variables, _ = _abstract_variables(model, (32, 32, 3), batch=1)
  assert _num_params(variables["params"]) == 11988132


@pytest.mark.parametrize(
  "name,shape",
  [
    ("convnet", (8, 8, 1)),
    ("convnet_ln", (8, 8, 1)),
    ("convnet_gn", (8, 8, 1)),
    ("convnet_nn", (8, 8, 1)),
    ("convnet_mp", (8, 8, 1)),
    ("convnet_np", (8, 8, 1)),
    ("convnet_as", (8, 8, 1)),
    ("convnet_al", (8, 8, 1)),
    ("convnet", (28, 28, 1)),
    ("mlp", (8, 8, 1)),
    ("lenet", (28, 28, 1)),
    ("alexnet", (8, 8, 1)),
    ("resnet18_bn_ap", (8, 8, 1)),
  ],
)
def test_forward_is_finite_and_embed_feeds_the_classifier(name, shape):
  options = TINY if name.startswith("convnet") else {}
  model = models.create(
    name, num_classes=5, image_shape=shape, conv_impl="xla", **options
  )
  x = _normal((3, *shape))
  variables = _random_variables(model, shape)
  logits, feats = jax.jit(
    lambda v, x: (model.apply(v, x), model.apply(v, x, method="embed"))
  )(variables, x)
  chex.assert_shape(logits, (3, 5))
  chex.assert_tree_all_finite((logits, feats))
  head = variables["params"][
    "fc_3" if name in ("mlp", "lenet") else "classifier"
  ]
  _assert_close(logits, feats @ head["kernel"] + head["bias"][None])
  # `embed` alone creates exactly the feature parameters of `__call__`.
  embed_only = jax.eval_shape(
    lambda k, x: model.init(k, x, method="embed"), jax.random.key(1), x[:1]
  )
  for path, leaf in _leaf_dicts(embed_only["params"]):
    chex.assert_trees_all_equal_shapes(leaf, _get(variables["params"], path))
  assert _num_params(embed_only["params"]) == _num_params(
    variables["params"]
  ) - _num_params(head)


def test_mnist_sized_inputs_pad_the_first_conv_by_three():
  def embed_dim(shape):
    model = models.create(
      "convnet", num_classes=10, image_shape=shape, width=8, depth=1
    )
    variables, x = _abstract_variables(model, shape)
    out = jax.eval_shape(
      lambda v, x: model.apply(v, x, method="embed"), variables, x
    )
    return out.shape[1]

  assert embed_dim((28, 28, 1)) == 8 * 16 * 16  # 28 + 2*3 - 2 = 32 -> 16
  assert embed_dim((28, 28, 3)) == 8 * 16 * 16
  assert embed_dim((30, 30, 1)) == 8 * 15 * 15  # pad 1 keeps 30 -> 15
  assert embed_dim((8, 8, 1)) == 8 * 4 * 4  # the embedded digits: pad 1


@pytest.mark.parametrize(
  "name,shape,options",
  [
    ("convnet_bn", (8, 8, 1), TINY),
    ("convnet", (8, 8, 1), {**TINY, "norm": "batch"}),
    ("alexnet_bn", (8, 8, 1), {}),
    ("resnet18_bn", (8, 8, 1), {}),
  ],
)
def test_batch_norm_models_update_batch_stats_in_train_mode(
  name, shape, options
):
  model = models.create(
    name, num_classes=3, image_shape=shape, conv_impl="xla", **options
  )
  assert models.uses_batch_norm(model)
  x = _normal((4, *shape))
  variables = _random_variables(model, shape)
  assert models.uses_batch_norm(variables)

  @jax.jit
  def run(variables, x):
    train = lambda method: model.apply(
      variables, x, train=True, method=method, mutable=["batch_stats"]
    )
    _, updates = train("__call__")
    _, embed_updates = train("embed")
    # Eval mode reads the running averages, so new stats change the logits.
    eval_before = model.apply(variables, x)
    eval_after = model.apply({**variables, **updates}, x)
    return updates, embed_updates, eval_before, eval_after

  updates, embed_updates, eval_before, eval_after = run(variables, x)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert len(before) == len(after) > 0
  for b, a in zip(before, after, strict=True):
    assert not np.allclose(a, b)
  assert not np.allclose(eval_before, eval_after)
  # embed shares the BatchNorm layers and their statistics.
  chex.assert_trees_all_close(embed_updates, updates)


@pytest.mark.parametrize(
  "name,shape,options",
  [
    ("convnet", (32, 32, 3), {}),
    ("convnet_bn", (8, 8, 1), {"width": 16}),
  ],
)
def test_initialisation_follows_pytorch_defaults(name, shape, options):
  model = models.create(name, num_classes=10, image_shape=shape, **options)
  k0, k1 = jax.random.key(0), jax.random.key(1)
  # vmapped over seeds as the evaluation protocol does: same key, same net.
  stacked = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(
    jnp.stack([k0, k1, k0]), jnp.zeros((1, *shape), jnp.float32)
  )
  variables = jax.tree.map(lambda a: np.asarray(a[0]), stacked)
  chex.assert_trees_all_equal(
    variables, jax.tree.map(lambda a: np.asarray(a[2]), stacked)
  )
  for path, layer in _leaf_dicts(variables["params"]):
    if "kernel" in layer:
      kernel = layer["kernel"]
      bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
      for leaf in (kernel, layer.get("bias", kernel)):
        assert np.abs(leaf).max() <= bound, path
      other = _get(stacked["params"], path)["kernel"][1]
      assert not np.allclose(kernel, other), path
      if kernel.size >= 4096:
        # U(-b, b): extremes near b, mean 0, std b / sqrt(3).
        assert np.abs(kernel).max() > 0.95 * bound, path
        assert abs(kernel.mean()) < 0.05 * bound, path
        np.testing.assert_allclose(
          kernel.std(), bound / math.sqrt(3), rtol=0.05
        )
    else:  # a norm layer
      np.testing.assert_array_equal(layer["scale"], 1.0)
      np.testing.assert_array_equal(layer["bias"], 0.0)
  for _, stats in _leaf_dicts(variables.get("batch_stats", {"_": {}})):
    if stats:
      np.testing.assert_array_equal(stats["mean"], 0.0)
      np.testing.assert_array_equal(stats["var"], 1.0)
