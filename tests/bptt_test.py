"""Tests of the BPTT meta-loss (lowrank_distill.objectives.bptt).

The unroll itself is trajectory matching's (trajectory_matching_test.py);
these check what BPTT adds: the real-batch loss at its end and the
meta-gradient through it to the images, the lr and soft label logits.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from lowrank_distill import models, train
from lowrank_distill.objectives import bptt


def _model(**options):
  options = {"width": 4, "depth": 1, **options}
  return models.create(
    "convnet",
    num_classes=3,
    image_shape=(8, 8, 1),
    conv_impl="im2col",
    **options,
  )


def _problem(dtype=jnp.float32, model=None):
  model = model or _model()
  variables = train.init_variables(jax.random.key(0), model, (8, 8, 1))
  params = jax.tree.map(lambda x: x.astype(dtype), variables["params"])
  images = jax.random.normal(jax.random.key(1), (6, 8, 8, 1), dtype)
  logits = jax.random.normal(jax.random.key(2), (6, 3), dtype)
  real = jax.random.normal(jax.random.key(3), (9, 8, 8, 1), dtype)
  labels = jnp.arange(9, dtype=jnp.int32) % 3
  return model, variables, params, images, logits, real, labels


def _loss(model, params, real, labels, *, jit=True, **kwargs):
  """(images, log_lr, label logits) -> the meta-loss of `_problem`; jitted
  unless `jit` is False (called eagerly, every call compiles its unroll's
  scan again)."""

  def loss(images, log_lr, logits):
    return bptt.meta_loss(
      jax.random.key(4),
      params,
      images,
      jax.nn.softmax(logits),
      real,
      labels,
      model=model,
      lr=jnp.exp(log_lr),
      **kwargs,
    )

  return jax.jit(loss) if jit else loss


def test_with_no_student_step_it_is_the_fresh_networks_loss():
  model, variables, params, images, logits, real, labels = _problem()
  loss = _loss(model, params, real, labels, steps=0, batch_size=6)
  expected = -jnp.mean(
    jnp.take_along_axis(
      jax.nn.log_softmax(model.apply(variables, real, train=True)),
      labels[:, None],
      axis=-1,
    )
  )
  np.testing.assert_allclose(loss(images, 0.0, logits), expected, rtol=1e-6)


def _directional_checks(loss, args, grads):
  """[(analytic, central finite difference)] of `loss` along a random
  direction of each argument, in float64."""
  eps = 1e-5
  pairs = []
  for i, (a, g) in enumerate(zip(args, grads)):
    d = jax.random.normal(jax.random.key(5 + i), jnp.shape(a), jnp.float64)
    plus = [x + eps * d if j == i else x for j, x in enumerate(args)]
    minus = [x - eps * d if j == i else x for j, x in enumerate(args)]
    fd = (loss(*plus) - loss(*minus)) / (2 * eps)
    pairs.append((float(jnp.sum(g * d)), float(fd)))
  return pairs


def test_meta_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    # Sigmoid, not ReLU: an SGD step is discontinuous in the images where a
    # ReLU's pre-activation crosses zero (its derivative jumps), and a
    # finite difference across such a jump measures the jump.
    model, _, params, images, logits, real, labels = _problem(
      jnp.float64, model=_model(activation="sigmoid")
    )
    loss = _loss(model, params, real, labels, steps=3, batch_size=4)
    args = (images, jnp.float64(np.log(0.5)), logits)
    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    # Images, log lr, label logits.
    for analytic, fd in _directional_checks(loss, args, grads):
      np.testing.assert_allclose(analytic, fd, rtol=1e-6)
      assert abs(fd) > 1e-5

    # The check fails wrong gradients: one that stops at the images
    # (stop_gradient through the unroll: zero), and one of an unroll a step
    # shorter (what a loop that dropped a step's contribution would give).
    stopped = jax.grad(
      lambda x, lr, y: loss(jax.lax.stop_gradient(x), lr, y), argnums=(0, 1, 2)
    )(*args)
    shorter = jax.grad(
      _loss(model, params, real, labels, steps=2, batch_size=4),
      argnums=(0, 1, 2),
    )(*args)
    for wrong in (stopped, shorter):
      analytic, fd = _directional_checks(loss, args, wrong)[0]
      assert not np.isclose(analytic, fd, rtol=1e-6, atol=0)


def test_checkpointed_and_plain_unrolls_agree():
  model, _, params, images, logits, real, labels = _problem()

  def value_and_grads(remat):
    loss = _loss(
      model,
      params,
      real,
      labels,
      steps=4,
      batch_size=4,
      dsa_strategy="color_crop_cutout_scale_rotate",
      remat=remat,
    )
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(
      images, jnp.float32(np.log(0.1)), logits
    )

  chex.assert_trees_all_close(
    value_and_grads(False), value_and_grads(True), rtol=1e-5, atol=1e-7
  )


def test_a_batch_norm_network_trains_and_meets_the_real_batch_in_train_mode():
  model = _model(norm="batch")
  _, variables, params, images, logits, real, labels = _problem(model=model)
  state = {"batch_stats": variables["batch_stats"]}
  loss = _loss(
    model, params, real, labels, steps=2, batch_size=3, model_state=state
  )
  g = jax.grad(loss)(images, jnp.float32(np.log(0.1)), logits)
  chex.assert_tree_all_finite(g)
  assert float(jnp.max(jnp.abs(g))) > 0
  # The real batch is normalised with its own statistics: scaling it (the
  # first conv is linear, its zero padding scales too) leaves an untrained
  # network's loss unchanged up to BatchNorm's epsilon.
  untrained = _loss(
    model, params, real, labels, steps=0, batch_size=3, model_state=state
  )
  shifted = _loss(
    model, params, 3.0 * real, labels, steps=0, batch_size=3, model_state=state
  )
  np.testing.assert_allclose(
    untrained(images, 0.0, logits), shifted(images, 0.0, logits), rtol=1e-3
  )


class MetaLossVariantsTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_meta_loss_agrees_jitted_and_eager(self):
    model, _, params, images, logits, real, labels = _problem()
    loss = self.variant(
      _loss(model, params, real, labels, jit=False, steps=2, batch_size=3)
    )
    value = loss(images, jnp.float32(np.log(0.05)), logits)
    chex.assert_shape(value, ())
    chex.assert_tree_all_finite(value)
    assert 0.0 < float(value)
