"""Tests of the trajectory-matching unroll and start schedules (objectives)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lowrank_distill import models, train
from lowrank_distill.objectives import trajectory_matching as tm

STRATEGY = "color_crop_cutout_scale_rotate"


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
  start = jax.tree.map(lambda x: x.astype(dtype), variables["params"])
  target = jax.tree.map(
    lambda x: x + 0.05 * jax.random.normal(jax.random.key(9), x.shape, dtype),
    start,
  )
  images = jax.random.normal(jax.random.key(1), (6, 8, 8, 1), dtype)
  targets = jax.nn.one_hot(jnp.arange(6) % 3, 3, dtype=dtype)
  return model, variables, start, target, images, targets


def _matching_loss(model, start, target, targets, *, jit=True, **unroll_kwargs):
  """(images, lr) -> the DSA trajectory loss of `_problem`'s student; jitted
  unless `jit` is False (called eagerly, every call compiles its unroll's
  scan again)."""

  def loss(images, lr):
    return tm.trajectory_loss(
      jax.random.key(2),
      start,
      target,
      images,
      targets,
      model=model,
      lr=lr,
      dsa_strategy=STRATEGY,
      **unroll_kwargs,
    )

  return jax.jit(loss) if jit else loss


def test_with_no_student_step_the_loss_is_exactly_one():
  model, _, start, target, images, targets = _problem()
  loss = _matching_loss(model, start, target, targets, steps=0, batch_size=6)
  assert float(loss(images, 0.01)) == 1.0


def test_meta_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    model, _, start, target, images, targets = _problem(jnp.float64)
    loss = _matching_loss(model, start, target, targets, steps=3, batch_size=4)
    lr = jnp.float64(0.1)
    g_images, g_lr = jax.grad(loss, argnums=(0, 1))(images, lr)
    direction = jax.random.normal(jax.random.key(3), images.shape, jnp.float64)
    eps = 1e-5
    fd_images = (
      loss(images + eps * direction, lr) - loss(images - eps * direction, lr)
    ) / (2 * eps)
    fd_lr = (loss(images, lr + eps) - loss(images, lr - eps)) / (2 * eps)
    np.testing.assert_allclose(
      jnp.sum(g_images * direction), fd_images, rtol=1e-5
    )
    np.testing.assert_allclose(g_lr, fd_lr, rtol=1e-5)


def test_checkpointed_and_plain_unrolls_agree():
  model, _, start, target, images, targets = _problem()

  def value_and_grads(remat):
    loss = _matching_loss(
      model, start, target, targets, steps=4, batch_size=4, remat=remat
    )
    return jax.value_and_grad(loss, argnums=(0, 1))(images, 0.05)

  chex.assert_trees_all_close(
    value_and_grads(False), value_and_grads(True), rtol=1e-5, atol=1e-7
  )


def test_a_momentum_student_follows_pytorch_sgd_and_is_differentiable():
  model, variables, start, target, images, targets = _problem()
  lr, momentum = 0.05, 0.9
  got = tm.unroll(
    jax.random.key(2),
    start,
    images,
    targets,
    model=model,
    lr=lr,
    steps=3,
    batch_size=6,
    momentum=momentum,
  )
  # By hand: every step sees the whole set (batch 6 of 6, no augmentation).
  params, velocity = start, jax.tree.map(jnp.zeros_like, start)
  state = {k: v for k, v in variables.items() if k != "params"}
  mask = jnp.ones((6,))
  for _ in range(3):
    grads = jax.grad(
      lambda p: train.masked_cross_entropy(
        model, p, state, images, targets, mask
      )[0]
    )(params)
    velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
  chex.assert_trees_all_close(got, params, rtol=1e-5, atol=1e-6)
  plain = tm.unroll(
    jax.random.key(2),
    start,
    images,
    targets,
    model=model,
    lr=lr,
    steps=3,
    batch_size=6,
  )
  assert not np.allclose(jax.tree.leaves(plain)[0], jax.tree.leaves(got)[0])

  def value_and_grads(remat):
    loss = _matching_loss(
      model,
      start,
      target,
      targets,
      steps=3,
      batch_size=4,
      remat=remat,
      momentum=momentum,
    )
    return jax.value_and_grad(loss, argnums=(0, 1))(images, 0.05)

  chex.assert_trees_all_close(
    value_and_grads(False), value_and_grads(True), rtol=1e-5, atol=1e-7
  )


def test_the_checkpointed_unroll_keeps_params_not_activations_per_step():
  model, _, start, target, images, targets = _problem()

  def temp_bytes(steps):
    loss = _matching_loss(
      model, start, target, targets, steps=steps, batch_size=6
    )
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(images, 0.05)
    return compiled.compile().memory_analysis().temp_size_in_bytes

  param_bytes = sum(p.nbytes for p in jax.tree.leaves(start))
  # Per step: the carried params and their saved gradient, nothing else
  # (an unroll without remat keeps ~88x the params a step here).
  assert (temp_bytes(34) - temp_bytes(2)) / 32 <= 3 * param_bytes


def test_a_student_with_batch_norm_uses_minibatch_statistics():
  model = _model(norm="batch")
  _, variables, start, target, images, targets = _problem(model=model)
  state = {"batch_stats": variables["batch_stats"]}
  g = jax.grad(
    lambda im: tm.trajectory_loss(
      jax.random.key(2),
      start,
      target,
      im,
      targets,
      model=model,
      lr=0.05,
      steps=2,
      batch_size=3,
      model_state=state,
    )
  )(images)
  chex.assert_tree_all_finite(g)
  assert float(jnp.max(jnp.abs(g))) > 0


def test_student_batches_cycle_through_the_set():
  idx, mask = tm.student_batches(jax.random.key(0), 10, batch_size=4, steps=6)
  chex.assert_shape(idx, (6, 4))
  # Two epochs of 3 chunks (4, 4, 2): every image twice.
  counts = np.bincount(np.asarray(idx)[np.asarray(mask) > 0], minlength=10)
  np.testing.assert_array_equal(counts, 2)


def test_uniform_starts_follow_the_reference():
  low, high = tm.start_range(
    7, schedule="uniform", iterations=100, max_start=20, last_start=48
  )
  assert (low, high) == (0, 19)


def test_progressive_start_grows_and_stays_in_range():
  kwargs = dict(
    schedule="progressive",
    iterations=100,
    max_start=20,
    delta=2.0,
    window=3,
    last_start=15,
  )
  ranges = [tm.start_range(it, **kwargs) for it in range(0, 101, 5)]
  highs = [high for _, high in ranges]
  assert highs == sorted(highs) and highs[0] == 2 and highs[-1] == 15
  for it, (low, high) in zip(range(0, 101, 5), ranges):
    assert 0 <= low <= high <= 15
    expected = int(np.floor(it / 100 * 20 + 2.0))
    assert high == min(expected, 15)
    # [m - window, m] clipped to the valid epochs [0, 15] end by end.
    assert low == min(max(expected - 3, 0), 15)
  rng = np.random.default_rng(0)
  _, starts = tm.sample_starts(rng, 50, num=200, num_experts=3, **kwargs)
  assert starts.min() >= 9 and starts.max() <= 12


@pytest.mark.parametrize(
  "schedule, max_start, delta, expected",
  [("uniform", 20, 0.0, (22, 22)), ("progressive", 20, 2.5, (25, 3))],
)
def test_snapshot_window_covers_every_drawable_target(
  schedule, max_start, delta, expected
):
  window = tm.snapshot_window(
    schedule=schedule, max_start=max_start, delta=delta, expert_epochs=2
  )
  assert window == expected
  # The last start a run can draw, with its target, fits the window read.
  last = max_start - 1 if schedule == "uniform" else int(max_start + delta)
  low, high = tm.start_range(
    100,
    schedule=schedule,
    iterations=100,
    max_start=max_start,
    delta=delta,
    last_start=10**6,
  )
  assert high == last and high + 2 + 1 == window[0]


def test_unknown_start_schedule_lists_the_valid_ones():
  with pytest.raises(ValueError, match="uniform.*progressive"):
    tm.check_start_schedule("cosine")


class TrajectoryLossVariantsTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_trajectory_loss_agrees_jitted_and_eager(self):
    model, _, start, target, images, targets = _problem()
    loss = self.variant(
      _matching_loss(
        model, start, target, targets, jit=False, steps=2, batch_size=3
      )
    )
    value = loss(images, jnp.float32(0.01))
    chex.assert_shape(value, ())
    chex.assert_tree_all_finite(value)
    assert 0.0 < float(value)
