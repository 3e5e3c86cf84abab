"""Tests of synthetic-set labels (lowrank_distill.parameterize.labels)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lowrank_distill.parameterize import labels


def test_hard_labels_are_class_major():
  np.testing.assert_array_equal(
    labels.hard(3, 2), np.array([0, 0, 1, 1, 2, 2], np.int32)
  )
  assert labels.hard(3, 2).dtype == jnp.int32
  np.testing.assert_array_equal(labels.hard(4, 1), np.arange(4))


def test_random_init():
  logits = labels.init_soft(
    jax.random.key(0), num_classes=10, images_per_class=20, method="random"
  )
  assert logits.shape == (200, 10) and logits.dtype == jnp.float32
  assert 0.85 < float(jnp.std(logits)) < 1.15
  other = labels.init_soft(
    jax.random.key(1), num_classes=10, images_per_class=20, method="random"
  )
  assert not np.allclose(logits, other)
  scaled = labels.init_soft(
    jax.random.key(0),
    num_classes=10,
    images_per_class=20,
    method="random",
    scale=0.1,
  )
  np.testing.assert_allclose(scaled, 0.1 * logits, rtol=1e-6)


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_onehot_init_puts_most_mass_on_the_class(num_classes):
  logits = labels.init_soft(
    jax.random.key(0),
    num_classes=num_classes,
    images_per_class=2,
    method="onehot",
  )
  probs = labels.from_logits(logits)
  hard = labels.hard(num_classes, 2)
  np.testing.assert_array_equal(jnp.argmax(probs, -1), hard)
  np.testing.assert_allclose(
    probs[jnp.arange(2 * num_classes), hard], labels.ONEHOT_MASS, rtol=1e-5
  )


def test_onehot_scale():
  assert labels.onehot_scale(10) == pytest.approx(np.log(81.0))
  assert labels.onehot_scale(1) == 0.0
  logits = labels.init_soft(
    None, num_classes=4, images_per_class=1, method="onehot", scale=3.0
  )
  np.testing.assert_array_equal(logits, 3.0 * np.eye(4))
  with pytest.raises(ValueError, match="mass"):
    labels.onehot_scale(10, mass=1.0)


def test_unknown_init_lists_valid_names():
  with pytest.raises(ValueError, match=r"labels.init.*random.*onehot.*expert"):
    labels.init_soft(
      jax.random.key(0), num_classes=2, images_per_class=1, method="teacher"
    )
  assert set(labels.LABEL_INITS) == {"random", "onehot", "expert"}


def test_expert_init_takes_the_expert_logits_scaled():
  logits = np.arange(18, dtype=np.float32).reshape(6, 3)
  out = labels.init_soft(
    None,
    num_classes=3,
    images_per_class=2,
    method="expert",
    expert_logits=logits,
  )
  np.testing.assert_array_equal(out, logits)
  half = labels.init_soft(
    None,
    num_classes=3,
    images_per_class=2,
    method="expert",
    expert_logits=logits,
    scale=0.5,
  )
  np.testing.assert_array_equal(half, 0.5 * logits)
  with pytest.raises(ValueError, match="expert_logits"):
    labels.init_soft(None, num_classes=3, images_per_class=2, method="expert")
  with pytest.raises(ValueError, match=r"\[6, 3\]"):
    labels.init_soft(
      None,
      num_classes=3,
      images_per_class=2,
      method="expert",
      expert_logits=logits[:5],
    )


def test_targets():
  hard = jnp.array([0, 2, 1], jnp.int32)
  np.testing.assert_array_equal(
    labels.targets(hard, 3), np.eye(3, dtype=np.float32)[[0, 2, 1]]
  )
  # Padding ids (-1) give an all-zero row: no loss.
  np.testing.assert_array_equal(
    labels.targets(jnp.array([-1, 1]), 2), [[0.0, 0.0], [0.0, 1.0]]
  )
  logits = jnp.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
  np.testing.assert_allclose(
    labels.targets(logits, 3), jax.nn.softmax(logits, -1), rtol=1e-6
  )
  np.testing.assert_allclose(labels.targets(logits).sum(-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="num_classes"):
    labels.targets(hard)
  with pytest.raises(ValueError, match="expected 4"):
    labels.targets(logits, 4)
  with pytest.raises(ValueError, match=r"\[n\]"):
    labels.targets(jnp.zeros((2, 2), jnp.int32), 2)


def test_soft_cross_entropy_equals_hard_for_one_hot_targets():
  logits = jax.random.normal(jax.random.key(0), (8, 5))
  hard = jnp.array([0, 1, 2, 3, 4, 0, 1, 2], jnp.int32)
  got = labels.soft_cross_entropy(logits, labels.targets(hard, 5))
  want = optax.softmax_cross_entropy_with_integer_labels(logits, hard)
  assert got.shape == (8,)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_soft_cross_entropy_with_soft_targets():
  logits = jax.random.normal(jax.random.key(0), (4, 3))
  target = jax.nn.softmax(jax.random.normal(jax.random.key(1), (4, 3)))
  got = labels.soft_cross_entropy(logits, target)
  want = -np.sum(np.asarray(target) * jax.nn.log_softmax(logits), axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Minimised (Gibbs) when the prediction is the target: the entropy.
  entropy = labels.soft_cross_entropy(jnp.log(target), target)
  assert np.all(np.asarray(entropy) <= np.asarray(got) + 1e-6)


def test_gradient_reaches_learnable_label_logits():
  label_logits = labels.init_soft(
    jax.random.key(0), num_classes=3, images_per_class=2
  )
  pred = jax.random.normal(jax.random.key(1), (6, 3))

  def loss(label_logits):
    target = labels.targets(label_logits, 3)
    return jnp.mean(labels.soft_cross_entropy(pred, target))

  grad = jax.jit(jax.grad(loss))(label_logits)
  assert grad.shape == (6, 3)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
