"""Tests of trajectory matching (objectives.trajectory_matching), its loop."""

import json
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from configs import experts as experts_config
from configs import tm as tm_config
from lowrank_distill import checkpoint, distill, experts, models, train
from lowrank_distill.objectives import trajectory_matching as tm

STRATEGY = "color_crop_cutout_scale_rotate"
REPO = pathlib.Path(__file__).resolve().parents[1]


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


def _matching_loss(model, start, target, targets, **unroll_kwargs):
  """(images, lr) -> the DSA trajectory loss of `_problem`'s student."""

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

  return loss


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


# ---------------------------------------------------------------------------
# The loop: a tiny expert buffer on digits, then MTT, LoMTT and MTT-LSS.


def _experts_config():
  config = experts_config.get_config("runlocal=true")
  config.model.options.update(width=4, depth=1)
  config.experts.update(num_experts=2, epochs=3, experts_in_parallel=2)
  return config


@pytest.fixture(scope="module")
def buffer_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("experts")
  experts.run(_experts_config(), workdir)
  return workdir


def _config(buffer_dir, variant):
  config = tm_config.get_config(f"runlocal=true,variant={variant}")
  config.model.options.update(width=4, depth=1)
  config.experts.path = str(buffer_dir)
  config.distill.update(iterations=1, syn_steps=2, expert_epochs=1, max_start=2)
  config.eval.update(epochs=1, num_models=1)
  return config


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mtt", "lomtt", "mtt_lss"])
def test_one_iteration_of_each_variant_runs_through_the_launcher(
  variant, buffer_dir, tmp_path
):
  workdir = tmp_path / variant
  command = [
    sys.executable,
    "launch/distill.py",
    f"--config=configs/tm.py:runlocal=true,variant={variant}",
    f"--workdir={workdir}",
    f"--config.experts.path={buffer_dir}",
    "--config.model.options.width=4",
    "--config.model.options.depth=1",
    "--config.distill.iterations=1",
    "--config.distill.syn_steps=2",
    "--config.distill.expert_epochs=1",
    "--config.distill.max_start=2",
    "--config.eval.epochs=1",
    "--config.eval.num_models=1",
  ]
  done = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == "tm" and results["iterations"] == 1
  assert results["param"] == tm_config.VARIANTS[variant]["param"]
  assert results["lr"] > 0
  assert "convnet:" in done.stdout


def test_the_step_traces_once_and_learns_images_labels_and_lr(buffer_dir):
  config = _config(buffer_dir, "mtt_lss")
  # The published lr_lr moves the log-lr by ~1e-6 a step; make it visible.
  config.distill.lr_lr = 100.0
  plan = distill.make_plan(config)
  trainable = distill.initial_trainable(jax.random.key(0), plan, config)
  assert set(trainable) == {"images", "labels", "log_lr"}
  optimizer = distill.make_optimizer(
    distill.optimizer_groups(config, trainable)
  )
  state = distill.init_state(trainable, optimizer)
  objective = distill.OBJECTIVES["tm"]
  step = jax.jit(
    chex.assert_max_traces(objective.build_step(plan, config, optimizer), n=1)
  )
  inputs = objective.inputs(plan, config)
  for i in range(2):
    state, metrics = step(state, jax.random.key(i), *inputs(i))
  assert int(state.skipped) == 0
  for group in ("images", "labels", "log_lr"):
    leaves_old = jax.tree.leaves(trainable[group])
    leaves_new = jax.tree.leaves(state.trainable[group])
    assert any(not np.allclose(a, b) for a, b in zip(leaves_old, leaves_new)), (
      group
    )


def test_expert_snapshots_are_drawn_reproducibly_by_step(buffer_dir):
  config = _config(buffer_dir, "mtt")
  plan = distill.make_plan(config)
  a = distill.tm.expert_snapshots(plan, config)
  b = distill.tm.expert_snapshots(plan, config)
  chex.assert_trees_all_equal(a(5), b(5))
  start, target = a(3)
  buffer = experts.open_buffer(buffer_dir)
  # Every drawn start and target is an expert snapshot M epochs apart.
  leaf = jax.tree.leaves(start)[0][0]
  found = [
    (e, t)
    for e in range(buffer.num_experts)
    for t in range(buffer.num_snapshots - 1)
    if np.array_equal(jax.tree.leaves(buffer.read(e, t, t + 1))[0][0], leaf)
  ]
  assert len(found) == 1
  e, t = found[0]
  chex.assert_trees_all_equal(
    jax.tree.map(lambda x: x[0], target),
    jax.tree.map(lambda x: x[0], buffer.read(e, t + 1, t + 2)),
  )


def test_the_guard_skips_and_counts_exploding_losses(buffer_dir):
  config = _config(buffer_dir, "mtt")
  config.distill.update(learn_lr=False, lr_student=1e4, max_loss=10.0)
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan, config)
  objective = distill.OBJECTIVES["tm"]
  step = jax.jit(objective.build_step(plan, config, optimizer))
  new, metrics = step(
    state, jax.random.key(0), *objective.inputs(plan, config)(0)
  )
  assert bool(metrics["skipped"]) and int(new.skipped) == 1
  chex.assert_trees_all_equal(new.trainable, state.trainable)


def test_snapshots_above_the_host_memory_limit_are_refused(buffer_dir):
  config = _config(buffer_dir, "mtt")
  config.experts.max_host_bytes = 1000
  with pytest.raises(ValueError, match="experts.max_host_bytes"):
    distill.tm.expert_snapshots(distill.make_plan(config), config)


def test_a_buffer_of_another_model_is_refused(buffer_dir, tmp_path):
  config = _config(buffer_dir, "mtt")
  config.model.options.width = 8
  with pytest.raises(checkpoint.CheckpointError, match="model.options.width"):
    distill.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_buffer_too_short_for_the_start_epochs_is_refused(buffer_dir):
  config = _config(buffer_dir, "mtt")
  config.distill.max_start = 10
  with pytest.raises(checkpoint.CheckpointError, match="distill.max_start"):
    distill.make_plan(config)


def test_a_missing_buffer_names_the_field(tmp_path):
  config = tm_config.get_config("runlocal=true")
  with pytest.raises(ValueError, match="experts.path"):
    distill.validate(config)
  # A caller that trains the buffer later (continual) checks the rest.
  distill.validate(config, check_inputs=False)
  config.distill.max_start = 0
  with pytest.raises(ValueError, match="distill.max_start"):
    distill.validate(config, check_inputs=False)
  config.distill.max_start = 1
  config.experts.path = str(tmp_path / "nothing")
  with pytest.raises(checkpoint.CheckpointError, match="experts.path"):
    distill.make_plan(config)


class TrajectoryLossVariantsTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_trajectory_loss_agrees_jitted_and_eager(self):
    model, _, start, target, images, targets = _problem()
    loss = self.variant(
      _matching_loss(model, start, target, targets, steps=2, batch_size=3)
    )
    value = loss(images, jnp.float32(0.01))
    chex.assert_shape(value, ())
    chex.assert_tree_all_finite(value)
    assert 0.0 < float(value)
