"""Tests of the networks (lowrank_distill.models)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_distill import models
from lowrank_distill.models import layers

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
}

TINY = {"width": 8, "depth": 2}


def _family(name):
  return name.removesuffix("_bn")


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


def _num_params(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _assert_close(actual, desired, tol=1e-5):
  """Agreement to `tol` relative to each array's largest magnitude."""
  for a, d in zip(
    jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True
  ):
    a, d = np.asarray(a), np.asarray(d)
    assert a.shape == d.shape
    scale = max(1.0, float(np.abs(d).max()))
    np.testing.assert_allclose(a, d, rtol=0, atol=tol * scale)


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


CONV_CASES = [
  # (h, w, cin, cout, kernel, stride, padding)
  (7, 7, 3, 4, 3, 1, 1),
  (8, 8, 1, 5, 3, 1, 3),
  (9, 8, 2, 3, 5, 1, 2),
  (9, 9, 2, 3, 5, 1, 0),
  (8, 8, 3, 4, 3, 2, 1),
  (9, 7, 4, 6, 1, 2, 0),
  (10, 9, 2, 3, 4, (2, 3), ((1, 2), (0, 1))),
  (6, 6, 3, 2, (2, 3), 1, (1, 0)),
]


def _conv_inputs(h, w, cin, cout, kernel):
  """Images [2, h, w, cin] and a fan-in-scaled kernel [kh, kw, cin, cout]."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  x = _normal((2, h, w, cin), seed=0)
  k = _normal((kh, kw, cin, cout), seed=1) / math.sqrt(kh * kw * cin)
  return x, k


@pytest.mark.parametrize("h,w,cin,cout,kernel,stride,padding", CONV_CASES)
def test_conv_impls_agree_in_values_and_gradients(
  h, w, cin, cout, kernel, stride, padding
):
  x, k = _conv_inputs(h, w, cin, cout, kernel)
  out_shape = jax.eval_shape(
    lambda x, k: models.conv2d(
      x, k, stride=stride, padding=padding, impl="xla"
    ),
    x,
    k,
  ).shape
  r = _normal(out_shape, seed=2)

  @jax.jit
  def run(x, k):
    def loss(x, k, impl):
      y = models.conv2d(x, k, stride=stride, padding=padding, impl=impl)
      return jnp.sum(jnp.sin(y) * r), y

    grad = jax.grad(loss, (0, 1), has_aux=True)
    return grad(x, k, "xla"), grad(x, k, "im2col")

  (g_xla, y_xla), (g_col, y_col) = run(x, k)
  _assert_close(y_col, y_xla)
  _assert_close(g_col, g_xla)


@pytest.mark.parametrize("h,w,cin,cout,kernel,stride,padding", CONV_CASES)
def test_conv_impls_agree_to_second_order(
  h, w, cin, cout, kernel, stride, padding
):
  # Trajectory matching differentiates a kernel gradient (the student's SGD
  # step) with respect to the images and the kernel.
  x, k = _conv_inputs(h, w, cin, cout, kernel)

  @jax.jit
  def run(x, k):
    def inner(k, x, impl):
      y = models.conv2d(x, k, stride=stride, padding=padding, impl=impl)
      return jnp.sum(jnp.sin(y))

    def outer(x, k, impl):
      step = k - 0.1 * jax.grad(inner)(k, x, impl)
      return jnp.sum(jnp.cos(step) * k)

    grad = jax.grad(outer, (0, 1))
    return grad(x, k, "xla"), grad(x, k, "im2col")

  g_xla, g_col = run(x, k)
  chex.assert_tree_all_finite(g_col)
  _assert_close(g_col, g_xla)


def test_conv2d_matches_a_direct_sum():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
  k = rng.normal(size=(3, 3, 2, 1)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((1, 3, 3, 1), np.float32)
  for i in range(3):
    for j in range(3):
      patch = xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
      expected[0, i, j, 0] = np.sum(patch * k[..., 0])
  for impl in models.CONV_IMPLS:
    out = models.conv2d(x, k, stride=2, padding=1, impl=impl)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "name,shape", [("convnet", (28, 28, 1)), ("convnet_bn", (8, 8, 1))]
)
def test_conv_impls_agree_on_a_whole_convnet(name, shape):
  make = lambda impl: models.create(
    name, num_classes=4, image_shape=shape, conv_impl=impl, **TINY
  )
  xla, im2col = make("xla"), make("im2col")
  x = _normal((3, *shape))
  variables = _random_variables(xla, shape)
  chex.assert_trees_all_equal_shapes(
    variables, _random_variables(im2col, shape)
  )

  def loss(params, x, model):
    out = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )[0]
    return jnp.sum(jnp.tanh(out))

  @jax.jit
  def run(variables, x):
    return [
      (
        jax.grad(loss, (0, 1))(variables["params"], x, model),
        model.apply(variables, x),
      )
      for model in (xla, im2col)
    ]

  (g_xla, y_xla), (g_col, y_col) = run(variables, x)
  _assert_close(y_col, y_xla)
  _assert_close(g_col, g_xla)


def test_auto_conv_impl_is_im2col_on_cpu():
  assert jax.default_backend() == "cpu"
  model = models.create("convnet", num_classes=10, image_shape=(8, 8, 1))
  assert model.conv_impl == "im2col"
  assert models.resolve_conv_impl("xla") == "xla"


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


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_uses_batch_norm_agrees_with_the_variables(name):
  shape = (32, 32, 3)
  options = models.options_for(name, TINY)
  model = models.create(name, num_classes=10, image_shape=shape, **options)
  variables, _ = _abstract_variables(model, shape, batch=1)
  assert models.uses_batch_norm(model) == ("batch_stats" in variables)
  assert models.uses_batch_norm(model) == name.endswith("_bn")


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


def test_bias_free_strided_conv_init_and_shape():
  conv = models.Conv(6, 1, stride=2, use_bias=False, impl="im2col")
  x = jnp.zeros((2, 8, 7, 4))
  variables = conv.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"kernel"}
  chex.assert_shape(variables["params"]["kernel"], (1, 1, 4, 6))
  assert np.abs(variables["params"]["kernel"]).max() <= 0.5  # 1/sqrt(4)
  chex.assert_shape(conv.apply(variables, x), (2, 4, 4, 6))


def test_unknown_names_and_options_list_valid_values():
  kwargs = {"num_classes": 10, "image_shape": (8, 8, 1)}
  with pytest.raises(ValueError, match=r"unknown model 'convnett'.*resnet18"):
    models.create("convnett", **kwargs)
  with pytest.raises(ValueError, match=r"norm must be one of .*instance"):
    models.create("convnet", norm="instancenorm", **kwargs)
  with pytest.raises(ValueError, match=r"pooling must be one of .*max"):
    models.create("convnet", pooling="mean", **kwargs)
  with pytest.raises(ValueError, match=r"activation must be one of .*sigmoid"):
    models.create("convnet", activation="gelu", **kwargs)
  with pytest.raises(ValueError, match=r"width must be a positive integer"):
    models.create("convnet", width=0, **kwargs)
  with pytest.raises(ValueError, match=r"no option 'dropout'.*width, depth"):
    models.create("convnet", dropout=0.5, **kwargs)
  with pytest.raises(ValueError, match=r"'lenet' has no option 'width'.*none"):
    models.create("lenet", width=8, image_shape=(28, 28, 1), num_classes=10)
  with pytest.raises(ValueError, match=r"fixes norm='batch'"):
    models.create("convnet_bn", norm="instance", **kwargs)
  with pytest.raises(ValueError, match=r"width % 4"):
    models.create("convnet_gn", width=6, **kwargs)
  with pytest.raises(ValueError, match=r"conv_impl must be one of .*im2col"):
    models.create("convnet", conv_impl="cudnn", **kwargs)
  with pytest.raises(ValueError, match=r"impl must be one of"):
    models.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fft")
  with pytest.raises(ValueError, match=r"num_classes"):
    models.create("convnet", num_classes=0, image_shape=(8, 8, 1))
  with pytest.raises(ValueError, match=r"cannot take images.*too small"):
    models.create("convnet", depth=4, **kwargs)
  with pytest.raises(ValueError, match=r"unknown eval model 'vit'.*lenet"):
    models.check_names(["convnet", "vit"], field="eval model")
  models.check_names(["convnet", "resnet18_bn"])
  # Passing a variant's own fixed value is fine.
  assert models.create("convnet_bn", norm="batch", **kwargs).norm == "batch"


def test_options_for_keeps_what_each_model_takes():
  options = {"width": 16, "depth": 2, "norm": "instance", "pooling": "avg"}
  assert models.options_for("convnet", options) == options
  assert models.options_for("convnet_bn", options) == {
    "width": 16,
    "depth": 2,
    "pooling": "avg",
  }
  assert models.options_for("lenet", options) == {}
  assert models.options_for("resnet18", None) == {}
  with pytest.raises(ValueError, match=r"unknown model option 'widht'"):
    models.options_for("convnet", {"widht": 16})
  with pytest.raises(ValueError, match=r"unknown model 'vgg'"):
    models.options_for("vgg", options)
  model = models.create(
    "convnet_bn",
    num_classes=10,
    image_shape=(8, 8, 1),
    **models.options_for("convnet_bn", options),
  )
  assert (model.width, model.depth, model.norm) == (16, 2, "batch")


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


def test_compiler_options_only_for_xla_conv_on_cpu():
  assert models.compiler_options("im2col") is None
  options = models.compiler_options("xla")
  assert options == {"xla_cpu_experimental_ynn_fusion_type": ""}
  model = models.create(
    "convnet", num_classes=3, image_shape=(8, 8, 1), conv_impl="xla", width=4
  )
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  variables = model.init(jax.random.key(2), x)
  fn = lambda v: model.apply(v, x)  # noqa: E731
  chex.assert_trees_all_close(
    jax.jit(fn, compiler_options=options)(variables),
    jax.jit(fn)(variables),
    rtol=1e-5,
    atol=1e-6,
  )


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
