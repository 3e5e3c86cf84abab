"""Tests of the gradient-matching distances and losses (objectives)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lowrank_distill import models, parameterize, train
from lowrank_distill.objectives import gradient_matching as gm

STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _model(name="convnet", num_classes=3):
  return models.create(
    name,
    num_classes=num_classes,
    image_shape=(8, 8, 1),
    width=8,
    depth=2,
    conv_impl="xla",
  )


def _grads(seed):
  keys = jax.random.split(jax.random.key(seed), 4)
  return {
    "conv": {
      "kernel": jax.random.normal(keys[0], (3, 3, 2, 4)),
      "bias": jax.random.normal(keys[1], (4,)),
    },
    "dense": {"kernel": jax.random.normal(keys[2], (5, 3))},
    "norm": {"scale": jax.random.normal(keys[3], (4,))},
  }


@pytest.mark.parametrize("name", sorted(gm.DISTANCES))
def test_distances_are_zero_for_identical_gradients(name):
  g = _grads(0)
  assert abs(float(gm.DISTANCES[name](g, g))) < 1e-5


@pytest.mark.parametrize("name", ["ours", "cos"])
def test_cosine_distances_ignore_positive_scaling(name):
  a, b = _grads(0), _grads(1)
  scaled = jax.tree.map(lambda x: 3.7 * x, a)
  np.testing.assert_allclose(
    gm.DISTANCES[name](scaled, b), gm.DISTANCES[name](a, b), rtol=1e-5
  )
  assert float(gm.DISTANCES[name](a, b)) > 0.1


def test_ours_ignores_one_dimensional_parameters():
  a, b = _grads(0), _grads(1)
  other_biases = {
    **a,
    "conv": {**a["conv"], "bias": -a["conv"]["bias"]},
    "norm": {"scale": 10 * a["norm"]["scale"]},
  }
  np.testing.assert_allclose(gm.ours(other_biases, b), gm.ours(a, b))
  assert float(gm.mse(other_biases, b)) != pytest.approx(float(gm.mse(a, b)))


def test_ours_matches_the_reference_layout():
  # PyTorch stores a conv kernel [out, in, h, w] and compares rows per
  # output channel; Flax's HWIO kernel must give the same number.
  a, b = _grads(0), _grads(1)

  def rows_distance(x, y):
    dots = np.sum(x * y, -1)
    norms = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    return np.sum(1 - dots / (norms + gm.COS_EPS))

  def torch_rows(kernel):
    k = np.asarray(kernel)
    if k.ndim == 4:
      return k.transpose(3, 2, 0, 1).reshape(k.shape[3], -1)
    return k.T

  expected = sum(
    rows_distance(torch_rows(x), torch_rows(y))
    for x, y in [
      (a["conv"]["kernel"], b["conv"]["kernel"]),
      (a["dense"]["kernel"], b["dense"]["kernel"]),
    ]
  )
  np.testing.assert_allclose(gm.ours(a, b), expected, rtol=1e-5)


def test_zero_gradient_rows_have_a_finite_distance_gradient():
  a, b = _grads(0), _grads(1)
  a["conv"]["kernel"] = a["conv"]["kernel"].at[..., 0].set(0.0)
  for name in ("ours", "cos"):
    chex.assert_tree_all_finite(
      jax.grad(gm.DISTANCES[name])(a, b), custom_message=name
    )


def test_unknown_distance_lists_the_valid_ones():
  with pytest.raises(ValueError, match="ours.*mse.*cos.*l1"):
    gm.check_distance("l2")


def _matching_inputs(num_classes=3, k=2, m=6):
  real = jax.random.normal(jax.random.key(0), (num_classes, m, 8, 8, 1))
  targets = jnp.broadcast_to(
    jnp.eye(num_classes)[:, None], (num_classes, k, num_classes)
  )
  model = _model(num_classes=num_classes)
  variables = train.init_variables(jax.random.key(1), model, (8, 8, 1))
  return real, targets, model, variables


def test_matching_loss_is_zero_when_synthetic_equals_real():
  real, _, model, variables = _matching_inputs(k=6)
  targets = jnp.broadcast_to(jnp.eye(3)[:, None], (3, 6, 3))
  loss = gm.matching_loss(
    jax.random.key(2),
    real,
    targets,
    real,
    model=model,
    variables=variables,
    distance="mse",
    dsa_strategy=STRATEGY,
  )
  assert abs(float(loss)) < 1e-9


@pytest.mark.parametrize(
  "param,kwargs",
  [
    ("pixels", {}),
    ("factors", {"rank": 2}),
    ("mappers", {"rank": 2, "num_sets": 2}),
  ],
)
def test_gradient_reaches_every_reconstructor_parameter(param, kwargs):
  real, targets, model, variables = _matching_inputs()
  reconstructor = parameterize.get(param)
  params = reconstructor.init(
    jax.random.key(3),
    num_classes=3,
    images_per_class=2,
    image_shape=(8, 8, 1),
    **kwargs,
  )

  def loss(params):
    syn = reconstructor.materialize(params).reshape(3, 2, 8, 8, 1)
    return gm.matching_loss(
      jax.random.key(2),
      syn,
      targets,
      real,
      model=model,
      variables=variables,
      dsa_strategy=STRATEGY,
      classes_in_parallel=3,
    )

  grads = jax.jit(jax.grad(loss))(params)
  chex.assert_tree_all_finite(grads)
  for name, g in grads.items():
    assert float(jnp.max(jnp.abs(g))) > 0, name


def test_gradient_reaches_soft_label_logits():
  real, _, model, variables = _matching_inputs()
  syn = jax.random.normal(jax.random.key(4), (3, 2, 8, 8, 1))
  logits = jax.random.normal(jax.random.key(5), (3, 2, 3))

  def loss(logits):
    return gm.matching_loss(
      jax.random.key(2),
      syn,
      jax.nn.softmax(logits),
      real,
      model=model,
      variables=variables,
    )

  g = jax.jit(jax.grad(loss))(logits)
  chex.assert_tree_all_finite(g)
  assert float(jnp.max(jnp.abs(g))) > 0


def test_batch_norm_statistics_are_set_from_real_data_and_then_frozen():
  model = _model("convnet_bn")
  variables = train.init_variables(jax.random.key(1), model, (8, 8, 1))
  real = 3.0 + jax.random.normal(jax.random.key(0), (3, 6, 8, 8, 1))
  updated = gm.batch_norm_statistics(
    model, variables, real.reshape(-1, 8, 8, 1)
  )
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updated["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  chex.assert_trees_all_equal(updated["params"], variables["params"])
  # Matching reads the frozen statistics: a synthetic class of one image
  # gets a finite, non-zero gradient (batch statistics of one would not).
  syn = jax.random.normal(jax.random.key(4), (3, 1, 8, 8, 1))
  targets = jnp.eye(3)[:, None]
  g = jax.jit(
    jax.grad(
      lambda s: gm.matching_loss(
        jax.random.key(2), s, targets, real, model=model, variables=updated
      )
    )
  )(syn)
  chex.assert_tree_all_finite(g)
  assert float(jnp.max(jnp.abs(g))) > 0


def test_train_on_synthetic_lowers_the_loss_and_zero_epochs_is_identity():
  model = _model()
  variables = train.init_variables(jax.random.key(1), model, (8, 8, 1))
  images = jax.random.normal(jax.random.key(0), (9, 8, 8, 1))
  targets = jax.nn.one_hot(jnp.arange(9) % 3, 3)

  def loss(v):
    logits = model.apply(v, images)
    return float(jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), -1)))

  trained = gm.train_on_synthetic(
    jax.random.key(2),
    variables,
    images,
    targets,
    model=model,
    epochs=20,
    lr=0.05,
    batch_size=4,
    dsa_strategy="none",
  )
  assert loss(trained) < loss(variables)
  same = gm.train_on_synthetic(
    jax.random.key(2),
    variables,
    images,
    targets,
    model=model,
    epochs=0,
    lr=0.05,
  )
  chex.assert_trees_all_equal(same, variables)


# ---------------------------------------------------------------------------
# The loop (distill with method 'gm').


class MatchingLossVariantsTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_matching_loss_agrees_jitted_and_eager(self):
    real, targets, model, variables = _matching_inputs()
    syn = jax.random.normal(jax.random.key(7), (3, 2, 8, 8, 1))

    @self.variant
    def loss(syn):
      return gm.matching_loss(
        jax.random.key(2),
        syn,
        targets,
        real,
        model=model,
        variables=variables,
        dsa_strategy=STRATEGY,
      )

    value = loss(syn)
    chex.assert_shape(value, ())
    chex.assert_tree_all_finite(value)
    np.testing.assert_allclose(
      float(value), float(jax.jit(loss.__wrapped__)(syn)), rtol=1e-5
    )
    assert float(value) > 0.0


def test_l1_sums_absolute_differences_of_convolution_kernels_only():
  a = _grads(0)
  b = {
    "conv": {
      "kernel": a["conv"]["kernel"] + 0.5,
      "bias": -a["conv"]["bias"],
    },
    "dense": {"kernel": 3.0 * a["dense"]["kernel"]},
    "norm": {"scale": 10.0 * a["norm"]["scale"]},
  }
  expected = 0.5 * a["conv"]["kernel"].size
  np.testing.assert_allclose(gm.l1(a, b), expected, rtol=1e-6)
  np.testing.assert_allclose(gm.l1(b, a), expected, rtol=1e-6)


def _real_set(num_classes=3, per_class=12, seed=0):
  from lowrank_distill import data

  labels = np.repeat(np.arange(num_classes), per_class)
  images = (
    jax.random.normal(jax.random.key(seed), (labels.size, 8, 8, 1))
    + jnp.asarray(labels, jnp.float32)[:, None, None, None]
  )
  return images, data.class_index(labels, num_classes), labels


def test_train_on_real_lowers_the_real_loss_and_carries_the_momentum():
  model = _model()
  images, index, labels = _real_set()
  params, state = train.split_variables(
    train.init_variables(jax.random.key(1), model, (8, 8, 1))
  )
  optimizer = train.sgd(momentum=0.9, weight_decay=5e-4)
  carry = (params, state, optimizer.init(params))

  def loss(p):
    logits = model.apply({"params": p}, images)
    targets = jax.nn.one_hot(labels, 3)
    return float(jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), -1)))

  @jax.jit  # one compilation for the nine passes
  def update(key, carry):
    return gm.train_on_real(
      key,
      carry,
      images,
      index,
      model=model,
      images_per_class=8,
      lr=0.02,
      batch_size=8,
      optimizer=optimizer,
    )

  first = update(jax.random.key(2), carry)
  # The momentum buffer is carried: a second pass from it differs from one
  # restarted with zero momentum.
  fresh = (first[0], first[1], optimizer.init(first[0]))
  second, restarted = (
    update(jax.random.key(3), first),
    update(jax.random.key(3), fresh),
  )
  assert not np.allclose(
    jax.tree.leaves(second[0])[0], jax.tree.leaves(restarted[0])[0]
  )
  trained = second
  for i in range(4, 10):
    trained = update(jax.random.key(i), trained)
  assert loss(trained[0]) < loss(params)
  chex.assert_tree_all_finite(trained[0])


def test_real_draw_takes_n_distinct_images_of_every_class():
  _, index, labels = _real_set(per_class=5)
  idx, targets = gm.real_draw(jax.random.key(0), index, n=3)
  chex.assert_shape(idx, (9,))
  chex.assert_shape(targets, (9, 3))
  np.testing.assert_array_equal(
    labels[np.asarray(idx)], np.repeat([0, 1, 2], 3)
  )
  np.testing.assert_array_equal(targets.argmax(-1), np.repeat([0, 1, 2], 3))
  assert len(set(np.asarray(idx).tolist())) == 9
  other, _ = gm.real_draw(jax.random.key(1), index, n=3)
  assert not np.array_equal(idx, other)


def test_train_on_real_without_an_optimiser_keeps_no_state():
  model = _model()
  images, index, _ = _real_set(per_class=4)
  params, state = train.split_variables(
    train.init_variables(jax.random.key(1), model, (8, 8, 1))
  )
  carry = gm.train_on_real(
    jax.random.key(0),
    (params, state, ()),
    images,
    index,
    model=model,
    images_per_class=2,
    lr=0.1,
    batch_size=6,
  )
  assert carry[2] == ()
  assert not np.allclose(
    jax.tree.leaves(carry[0])[0], jax.tree.leaves(params)[0]
  )


def test_the_class_terms_sum_to_the_matching_loss():
  real, targets, model, variables = _matching_inputs()
  syn = jax.random.normal(jax.random.key(5), (3, 2, 8, 8, 1))
  settings = dict(
    model=model, variables=variables, distance="l1", dsa_strategy=STRATEGY
  )
  key = jax.random.key(2)
  # Jitted: op by op, the augmentations and gradients compile ~300 programs.
  total = jax.jit(functools.partial(gm.matching_loss, **settings))(
    key, syn, targets, real
  )
  class_loss = jax.jit(
    functools.partial(gm.class_matching_loss, num_classes=3, **settings)
  )
  terms = [class_loss(key, c, syn[c], targets[c], real[c]) for c in range(3)]
  np.testing.assert_allclose(sum(terms), total, rtol=1e-5)
  # Each term sees its own class only.
  moved = class_loss(key, 0, syn[0], targets[0], real[0] + 1.0)
  assert not np.isclose(moved, terms[0])


def test_train_on_real_with_cutmix_trains_on_mixed_batches():
  model = _model()
  images, index, _ = _real_set(per_class=4)
  params, state = train.split_variables(
    train.init_variables(jax.random.key(1), model, (8, 8, 1))
  )

  def one_pass(cutmix_prob, strategy="none"):
    return gm.train_on_real(
      jax.random.key(0),
      (params, state, ()),
      images,
      index,
      model=model,
      images_per_class=4,
      lr=0.1,
      batch_size=6,
      dsa_strategy=strategy,
      cutmix_prob=cutmix_prob,
    )[0]

  plain, mixed = one_pass(0.0), one_pass(1.0)
  assert not np.allclose(jax.tree.leaves(plain)[0], jax.tree.leaves(mixed)[0])
  chex.assert_tree_all_finite(mixed)
  # With CutMix the DSA leaves out cutout: 'cutout' alone is then no DSA.
  chex.assert_trees_all_equal(one_pass(1.0, "cutout"), mixed)
