"""Tests of the distillation loop (lowrank_distill.distill)."""

import copy
import dataclasses
import functools
import inspect
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import label_experts_helpers
import numpy as np
import pytest
from absl.testing import parameterized

from configs import bptt as bptt_config
from configs import dm as dm_config
from configs import evaluate as evaluate_config
from configs import gm as gm_config
from configs import tm as tm_config
from lowrank_distill import (
  checkpoint,
  config_utils,
  distill,
  evaluate,
  parameterize,
  rng,
  synset,
)
from lowrank_distill.parameterize import labels as labels_lib


def _config(arg="", **distill_overrides):
  config = dm_config.get_config(
    "runlocal=true," + arg if arg else "runlocal=true"
  )
  config.distill.update(distill_overrides)
  # The protocol itself is tested in evaluate_test; keep these runs short.
  config.eval.update(epochs=2, num_models=1)
  return config


def test_guard_skips_and_counts_non_finite_losses():
  optimizer = distill.make_optimizer({"images": (0.1, 0.5)})
  state = distill.init_state({"images": {"x": jnp.ones(3)}}, optimizer)

  def loss_fn(trainable, key, scale):
    return scale * jnp.sum(trainable["images"]["x"] ** 2)

  step = jax.jit(distill.make_train_step(loss_fn, optimizer, max_loss=100.0))
  new, metrics = step(state, jax.random.key(0), jnp.float32(jnp.nan))
  assert bool(metrics["skipped"]) and int(new.skipped) == 1
  chex.assert_trees_all_equal(new.trainable, state.trainable)
  chex.assert_trees_all_equal(new.opt_state, state.opt_state)
  exploding, _ = step(new, jax.random.key(0), jnp.float32(1e6))
  assert int(exploding.skipped) == 2
  fine, metrics = step(exploding, jax.random.key(0), jnp.float32(1.0))
  assert not bool(metrics["skipped"]) and int(fine.step) == 3
  assert float(fine.trainable["images"]["x"][0]) < 1.0


def test_optimizer_groups_use_their_own_learning_rates():
  optimizer = distill.make_optimizer(
    {"images": (1.0, 0.0), "log_lr": (0.5, 0.0)}
  )
  params = {"images": {"a": jnp.zeros(2)}, "log_lr": jnp.float32(0.0)}
  grads = {"images": {"a": jnp.ones(2)}, "log_lr": jnp.float32(1.0)}
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["images"]["a"], [-1.0, -1.0])
  np.testing.assert_allclose(updates["log_lr"], -0.5)


def test_hallucinators_take_their_own_lr_inside_the_images_group():
  optimizer = distill.make_optimizer(
    {"images": (1.0, 0.0), "hallucinators": (0.01, 0.0)}
  )
  params = {
    "images": {
      "bases": {"images": jnp.zeros(2)},
      "hallucinators": {"scale": jnp.zeros(3)},
    }
  }
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["images"]["bases"]["images"], -1.0)
  np.testing.assert_allclose(updates["images"]["hallucinators"]["scale"], -0.01)


def test_a_projected_optimizer_lands_on_the_projected_params():
  def project(trainable):
    return {"images": {"a": trainable["images"]["a"] / 2}}

  plain = distill.make_optimizer({"images": (1.0, 0.5)})
  projected = distill.make_optimizer({"images": (1.0, 0.5)}, project=project)
  params = {"images": {"a": jnp.arange(3.0)}}
  grads = {"images": {"a": jnp.ones(3)}}
  state = projected.init(params)
  # The state is the plain optimiser's: checkpoints keep their structure.
  chex.assert_trees_all_equal_structs(state, plain.init(params))
  updates, _ = projected.update(grads, state, params)
  np.testing.assert_allclose(
    (params["images"]["a"] + updates["images"]["a"]),
    (params["images"]["a"] - 1.0) / 2,
  )


def test_an_averaged_optimizer_keeps_the_moving_average_of_the_set():
  groups = {"images": (1.0, 0.5), "labels": (0.5, 0.0), "log_lr": (0.1, 0.0)}
  plain = distill.make_optimizer(groups)
  averaging = distill.with_average(plain, decay=0.75)
  trainable = {
    "images": {"x": jnp.array([1.0, 2.0])},
    "labels": jnp.array([[0.0, 1.0]]),
    "log_lr": jnp.float32(-4.0),
  }

  def loss_fn(trainable, key, scale):
    del key
    return scale * sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(trainable))

  step = jax.jit(distill.make_train_step(loss_fn, averaging, max_loss=1e3))
  plain_step = jax.jit(distill.make_train_step(loss_fn, plain, max_loss=1e3))
  state = distill.init_state(trainable, averaging)
  plain_state = distill.init_state(trainable, plain)
  expected = {"images": trainable["images"], "labels": trainable["labels"]}
  for scale in (1.0, jnp.nan, 0.5):
    state, metrics = step(state, jax.random.key(0), jnp.float32(scale))
    plain_state, _ = plain_step(plain_state, jax.random.key(0), scale)
    if not bool(metrics["skipped"]):
      new = {
        "images": state.trainable["images"],
        "labels": state.trainable["labels"],
      }
      expected = jax.tree.map(lambda a, p: 0.75 * a + 0.25 * p, expected, new)
    # The average never feeds back: the set trains as without it.
    chex.assert_trees_all_equal(state.trainable, plain_state.trainable)
    chex.assert_trees_all_close(state.opt_state.average, expected)
  assert int(state.skipped) == 1
  # The run reports the averaged images and labels with its last lr.
  reported = distill.averaged(state)
  chex.assert_trees_all_close(reported["images"], expected["images"])
  chex.assert_trees_all_close(reported["labels"], expected["labels"])
  assert reported["log_lr"] is state.trainable["log_lr"]
  assert not np.allclose(
    reported["images"]["x"], state.trainable["images"]["x"]
  )
  assert distill.averaged(plain_state) is plain_state.trainable


def test_an_average_keeps_a_frozen_group_at_its_value():
  averaging = distill.with_average(
    distill.make_optimizer({"images": None, "labels": (1.0, 0.0)}), decay=0.9
  )
  trainable = {
    "images": {"x": jnp.array([0.1, 0.3, 0.7])},
    "labels": jnp.array([[0.0, 1.0]]),
  }
  state = distill.init_state(trainable, averaging)
  grads = jax.tree.map(jnp.ones_like, trainable)
  _, opt_state = averaging.update(grads, state.opt_state, trainable)
  chex.assert_trees_all_equal(opt_state.average["images"], trainable["images"])
  np.testing.assert_allclose(opt_state.average["labels"], [[-0.1, 0.9]])


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_an_average_outside_its_range_is_refused(decay):
  with pytest.raises(ValueError, match=r"decay.*\[0, 1\)"):
    distill.with_average(
      distill.make_optimizer({"images": (1.0, 0.0)}), decay=decay
    )


def _mapper_config(**distill_overrides):
  config = tm_config.get_config("runlocal=true,variant=mtt_lss")
  config.distill.update(distill_overrides)
  config.eval.update(epochs=2, num_models=1)
  return config


def _mapper_singular_values(trainable):
  u, v = trainable["images"]["u"], trainable["images"]["v"]
  return np.concatenate(
    [
      np.linalg.svd(np.asarray(u), compute_uv=False).ravel(),
      np.linalg.svd(np.asarray(v), compute_uv=False).ravel(),
    ]
  )


@pytest.mark.parametrize("hold", [False, True])
def test_orthonormal_mappers_stay_orthonormal_through_distillation(hold):
  """A loss blind to each image's and channel's scale (as the instance-
  normalised ConvNet's) has gradients orthogonal to every mapper, so each
  SGD step lengthens them unless they are held orthonormal."""
  config = _mapper_config(lr_images=1000.0, orthonormal_mappers=hold)
  plan = distill.make_plan(config, check_inputs=False)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  np.testing.assert_allclose(
    _mapper_singular_values(state.trainable), 1.0, atol=1e-5
  )

  def scale_blind_loss(trainable, key):
    del key
    images = plan.reconstructor.materialize(trainable["images"])
    norms = jnp.linalg.norm(images, axis=(1, 2), keepdims=True)
    return jnp.sum(jnp.tanh(images / norms))

  step = jax.jit(
    distill.make_train_step(scale_blind_loss, optimizer, max_loss=1e8)
  )
  before = plan.reconstructor.materialize(state.trainable["images"])
  for i in range(3):
    state, metrics = step(state, jax.random.key(i))
    assert not bool(metrics["skipped"])
  values = _mapper_singular_values(state.trainable)
  after = plan.reconstructor.materialize(state.trainable["images"])
  assert not np.allclose(after, before, atol=1e-3)
  if hold:
    np.testing.assert_allclose(values, 1.0, atol=1e-4)
  else:
    assert values.max() > 1.01


def test_mappers_take_their_own_lr_and_their_codes_the_images():
  optimizer = distill.make_optimizer(
    {"images": (1.0, 0.0), "mappers": (0.01, 0.0)}
  )
  params = {
    "images": {"u": jnp.zeros(2), "v": jnp.zeros(3), "codes": jnp.zeros(4)}
  }
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["images"]["u"], -0.01)
  np.testing.assert_allclose(updates["images"]["v"], -0.01)
  np.testing.assert_allclose(updates["images"]["codes"], -1.0)


def test_a_mapper_lr_is_planned_only_when_set():
  config = _mapper_config(lr_mappers=0.0)
  plan = distill.make_plan(config, check_inputs=False)
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  assert "mappers" not in distill.optimizer_groups(plan, trainable)
  config = _mapper_config(lr_mappers=0.5)
  plan = distill.make_plan(config, check_inputs=False)
  groups = distill.optimizer_groups(plan, trainable)
  assert groups["mappers"] == (0.5, config.distill.momentum)
  assert groups["images"] == (config.distill.lr_images, config.distill.momentum)


@pytest.mark.parametrize("module", [dm_config, tm_config])
def test_the_configs_give_mappers_their_own_lr_and_other_sets_none(module):
  # At the images' lr the shared mappers grew until the set diverged (DM:
  # images at 1e6 on MNIST; TM: 13-68x the real images' scale).
  config = module.get_config("runlocal=true,param=mappers")
  plan = distill.make_plan(config, check_inputs=False)
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  groups = distill.optimizer_groups(plan, trainable)
  assert groups["mappers"] == (module.MAPPER_LR, config.distill.momentum)
  assert module.MAPPER_LR < config.distill.lr_images / 10
  config = module.get_config("runlocal=true,param=factors")
  assert config.distill.lr_mappers == 0.0
  distill.validate(config, check_inputs=False)


def test_mapper_settings_are_refused_for_sets_without_mappers():
  config = _mapper_config(orthonormal_mappers=True, lr_mappers=0.0)
  config.synset.param = "factors"
  with pytest.raises(
    ValueError, match=r"distill.orthonormal_mappers.*'factors'.*'mappers'"
  ):
    distill.validate(config, check_inputs=False)
  config = _mapper_config(lr_mappers=0.5)
  config.synset.param = "pixels"
  with pytest.raises(
    ValueError, match=r"distill.lr_mappers.*'pixels'.*'mappers'"
  ):
    distill.validate(config, check_inputs=False)
  config = _mapper_config(orthonormal_mappers=True, learn_images=False)
  config.labels.lr = 1.0
  with pytest.raises(
    ValueError, match=r"distill.orthonormal_mappers.*learn_images"
  ):
    distill.validate(config, check_inputs=False)


def test_a_hallucinator_run_plans_their_lr_and_the_others_do_not():
  config = _config("param=lowrank_hallucinators,num_hallucinators=2,ipc=2")
  config.distill.lr_hallucinators = 0.25
  plan = distill.make_plan(config)
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  groups = distill.optimizer_groups(plan, trainable)
  assert groups["hallucinators"] == (0.25, config.distill.momentum)
  assert groups["images"] == (config.distill.lr_images, config.distill.momentum)
  plain = distill.make_plan(_config())
  assert "hallucinators" not in distill.optimizer_groups(
    plain, distill.initial_trainable(jax.random.key(0), plain)
  )


def test_the_jitted_step_traces_once():
  config = _config()
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  objective = distill.OBJECTIVES["dm"]
  step = jax.jit(
    chex.assert_max_traces(objective.build_step(plan, optimizer), n=1)
  )
  inputs = objective.inputs(plan)
  for i in range(3):
    state, metrics = step(state, jax.random.key(i), *inputs(i))
  assert int(state.step) == 3
  chex.assert_tree_all_finite(state.trainable)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """One uninterrupted runlocal run, shared by the tests that only read it."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, distill.run(_config(), workdir)


def test_run_exports_a_set_that_reloads_and_evaluates(finished_run, tmp_path):
  run_dir, summary = finished_run
  for name in ("config.json", "metrics.jsonl", "eval_models.jsonl"):
    assert (run_dir / name).exists(), name
  assert list((run_dir / "images").glob("synset_*.png"))
  assert list((run_dir / "images").glob("factors_*.png"))
  assert (run_dir / "metrics.png").exists()
  assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
  exported = synset.load(run_dir / "synset")
  plan = distill.make_plan(_config())
  n = plan.images_per_class * plan.num_classes
  chex.assert_shape(exported.images, (n, 8, 8, 1))
  assert exported.storage_floats <= plan.budget.floats_allowed
  assert summary["results"]["convnet"]["mean"] > 0.0
  eval_cfg = evaluate_config.get_config(
    f"synset={run_dir / 'synset'},runlocal=true"
  )
  results = evaluate.run(eval_cfg, tmp_path / "eval")
  assert 0.0 <= results["results"]["convnet"]["mean"] <= 1.0
  assert _loss_steps(run_dir) == [2, 4]
  # The portable copy beside it describes itself and evaluates the same.
  with np.load(run_dir / "synset.npz") as portable:
    metadata = json.loads(str(portable["metadata"]))
    np.testing.assert_array_equal(portable["images"], exported.images)
  recipe = metadata["info"]["recipe"]
  assert recipe["dataset"]["mean"] == list(plan.dataset.mean)
  assert recipe["distilled_on"]["model"]["class"] == "ConvNet"
  assert recipe["evaluation"]["dsa_strategy"] == _config().eval.dsa_strategy
  # configs/evaluate.py evaluates the set with its recipe's DSA (digits: no
  # flip), not DSA's default.
  assert eval_cfg.eval.dsa_strategy == config_utils.DSA_FROM_SET
  assert results["dsa_strategy"] == recipe["evaluation"]["dsa_strategy"]
  assert "flip" not in results["dsa_strategy"]
  assert recipe["labels"].startswith("hard") and "table" in recipe["storage"]
  npz_cfg = evaluate_config.get_config(
    synset=str(run_dir / "synset.npz"),
    released="npz",
    dataset="digits",
    runlocal=True,
  )
  again = evaluate.run(npz_cfg, tmp_path / "eval_npz")
  assert again["results"] == results["results"]


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def _loss_steps(workdir):
  return [r["step"] for r in _records(workdir) if "loss" in r]


def _final_state(workdir, config):
  plan = distill.make_plan(config)
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  optimizer = distill.set_optimizer(plan, trainable)
  abstract = jax.eval_shape(lambda: distill.init_state(trainable, optimizer))
  with checkpoint.Checkpointer(
    workdir / "checkpoints", config=distill.loop._identity_config(config)
  ) as ckpt:
    state, _ = ckpt.restore(abstract)
  return state


def test_a_killed_and_resumed_run_matches_an_uninterrupted_one(
  finished_run, tmp_path
):
  config = _config()
  assert config.distill.iterations == 4
  # "Killed" after 2 iterations (its last checkpoint), then started again.
  distill.run(_config(iterations=2), tmp_path)
  distill.run(config, tmp_path)
  straight = _final_state(finished_run[0], config)
  resumed = _final_state(tmp_path, config)
  assert int(resumed.step) == 4
  chex.assert_trees_all_equal(straight, resumed)
  assert _loss_steps(tmp_path) == [2, 4]


def test_an_averaged_run_exports_its_average_and_resumes_it(
  finished_run, tmp_path
):
  config = _config(ema_decay=0.5)
  assert config.distill.iterations == 4
  # No final evaluation: the set it would score is the export, checked here.
  run = functools.partial(distill.run, final_eval=False)
  straight = run(config, tmp_path / "straight")
  # "Killed" after 2 iterations (its last checkpoint), then started again.
  run(_config(ema_decay=0.5, iterations=2), tmp_path / "resumed")
  run(config, tmp_path / "resumed")
  state = _final_state(tmp_path / "straight", config)
  chex.assert_trees_all_equal(state, _final_state(tmp_path / "resumed", config))
  exported = synset.load(tmp_path / "straight" / "synset")
  chex.assert_trees_all_close(
    exported.params, state.opt_state.average["images"]
  )
  last = synset.load(tmp_path / "straight" / distill.loop.LAST_SET)
  chex.assert_trees_all_close(last.params, state.trainable["images"])
  assert not np.allclose(exported.images, last.images)
  # Without an average there is no second set.
  assert straight["ema_decay"] == 0.5
  assert finished_run[1]["ema_decay"] == 0.0
  assert not (finished_run[0] / distill.loop.LAST_SET).exists()
  # The average never feeds back: the last set is the plain run's.
  plain = synset.load(finished_run[0] / "synset")
  np.testing.assert_array_equal(plain.images, last.images)


def test_an_average_decay_outside_its_range_is_refused_before_compute(tmp_path):
  with pytest.raises(ValueError, match=r"distill.ema_decay"):
    distill.run(_config(ema_decay=1.0), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_mid_run_evaluation_scores_and_keeps_the_set_of_its_step(tmp_path):
  config = _config(eval_every=2)
  assert config.distill.iterations == 4
  distill.run(config, tmp_path / "long")
  (midrun,) = [
    r for r in _records(tmp_path / "long") if "eval" in r and not r.get("final")
  ]
  assert midrun["step"] == 2
  kept = synset.load(tmp_path / "long" / distill.loop.midrun_export_name(2))
  assert (tmp_path / "long" / "synset_000002.npz").exists()
  # A run that ends at that step exports the same set and scores it alike.
  short = distill.run(_config(iterations=2), tmp_path / "short")
  ended = synset.load(tmp_path / "short" / "synset")
  chex.assert_trees_all_equal(kept.params, ended.params)
  np.testing.assert_array_equal(kept.labels, ended.labels)
  assert kept.info["recipe"] == ended.info["recipe"]
  assert midrun["eval"] == short["results"]


def test_running_a_finished_run_again_reads_its_evaluation_back(
  finished_run, tmp_path
):
  workdir = tmp_path / "again"
  shutil.copytree(finished_run[0], workdir)
  log = workdir / evaluate.MODEL_LOG
  (record,) = [json.loads(line) for line in log.read_text().splitlines()]
  test_size = distill.make_plan(_config()).dataset.test_images.shape[0]
  accuracy = finished_run[1]["results"]["convnet"]["accuracies"][0]
  assert record["correct"] == round(accuracy * test_size)
  # An edited log shows the result is read back, not trained again.
  log.write_text(json.dumps({**record, "correct": 3}) + "\n")
  again = distill.run(_config(), workdir)
  assert again["results"]["convnet"]["accuracies"] == [3 / test_size]
  written = json.loads((workdir / "results.json").read_text())
  assert written["results"] == again["results"]


def test_a_workdir_of_another_config_is_refused_untouched(finished_run):
  workdir, _ = finished_run
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  with pytest.raises(checkpoint.CheckpointError, match="synset.param"):
    distill.run(_config("param=pixels"), workdir)
  after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  assert before == after


@pytest.mark.parametrize(
  "arg,field",
  [
    ("rank=9", "rank"),
    ("param=voxels", "synset.param"),
    ("budget=lots", "synset.budget"),
    ("ipc=1000", "synset.ipc"),
    ("param=factors,rank=8,budget=same-memory", "budget"),
  ],
)
def test_bad_input_is_refused_before_compute(tmp_path, arg, field):
  with pytest.raises(ValueError, match=field):
    distill.run(_config(arg), tmp_path / "run")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "labels, field",
  [
    (dict(lr=0.1, init="onehot"), r"labels.lr 0.1.*'dm'.*no gradient"),
    (
      dict(lr=0.0, init="random"),
      r"labels.init 'random'.*\['expert', 'onehot'\]",
    ),
  ],
)
def test_dm_refuses_soft_labels_it_would_have_to_learn(labels, field):
  config = _config()
  config.labels.update(kind="soft", **labels)
  with pytest.raises(ValueError, match=field):
    distill.validate(config)


@pytest.fixture(scope="module")
def label_buffer(tmp_path_factory):
  """One expert trained 2 epochs on digits with `_config`'s network."""
  return label_experts_helpers.train_label_buffer(
    tmp_path_factory.mktemp("label_experts")
  )


def test_dm_stores_expert_soft_labels_as_they_start(label_buffer, tmp_path):
  config = _config("param=mappers,rank=2,num_sets=1", iterations=2)
  config.labels.update(kind="soft", init="expert", experts=str(label_buffer))
  plan = distill.make_plan(config)
  hard = distill.make_plan(_config("param=mappers,rank=2,num_sets=1"))
  assert plan.budget.soft_labels
  # The label logits take storage: fewer images fit the same memory.
  assert plan.images_per_class < hard.images_per_class
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  images = plan.reconstructor.materialize(state.trainable["images"])
  expected = label_experts_helpers.trained_expert_predictions(
    label_buffer, plan.model, images
  )
  chex.assert_trees_all_close(state.trainable["labels"], expected, atol=1e-5)
  objective = distill.OBJECTIVES["dm"]
  new, _ = jax.jit(objective.build_step(plan, optimizer))(
    state, jax.random.key(1), *objective.inputs(plan)(0)
  )
  chex.assert_trees_all_equal(new.trainable["labels"], expected)
  assert not np.allclose(
    plan.reconstructor.materialize(new.trainable["images"]), images
  )
  # A whole run exports the labels its own initial images were given.
  summary = distill.run(config, tmp_path / "run")
  exported = synset.load(tmp_path / "run" / "synset")
  run_start, _ = distill.initial_state(
    rng.stream(jax.random.key(plan.seed), "init"), plan
  )
  chex.assert_trees_all_close(
    exported.labels, run_start.trainable["labels"], atol=1e-5
  )
  assert exported.storage_floats <= plan.budget.floats_allowed
  assert summary["results"]["convnet"]["mean"] > 0.0


def test_expert_label_init_is_refused_without_an_expert():
  from configs import gm as gm_config

  config = gm_config.get_config("runlocal=true")
  config.labels.update(kind="soft", init="expert")
  with pytest.raises(
    ValueError, match=r"labels.init 'expert'.*labels.experts.*\['tm'\]"
  ):
    distill.validate(config)


def _starting_from(config, path):
  config.synset.update(init="set", init_set=str(path))
  return config


def test_a_run_starts_from_an_exported_set_and_distils_it_further(
  finished_run, tmp_path
):
  exported = synset.load(finished_run[0] / "synset")
  config = _starting_from(_config(iterations=2), finished_run[0] / "synset")
  plan = distill.make_plan(config)
  start, _ = distill.initial_state(jax.random.key(5), plan)
  chex.assert_trees_all_equal(start.trainable["images"], exported.params)
  distill.run(config, tmp_path / "run")
  further = synset.load(tmp_path / "run" / "synset")
  chex.assert_trees_all_equal_shapes(further.params, exported.params)
  assert not np.allclose(further.images, exported.images)


def _save_set(path, plan, trainable, *, labels, lr):
  synset.save(
    path,
    synset.SyntheticSet(
      images=np.asarray(plan.reconstructor.materialize(trainable["images"])),
      labels=np.asarray(labels),
      param=plan.budget.param,
      params=jax.tree.map(np.asarray, trainable["images"]),
      storage_floats=1,
      dataset=plan.dataset.metadata(),
      lr=lr,
    ),
  )


def test_a_set_hands_on_its_soft_labels_and_learned_lr(tmp_path):
  config = tm_config.get_config("runlocal=true,variant=mtt_lss")
  plan = distill.make_plan(config, check_inputs=False)
  assert plan.budget.soft_labels and plan.budget.learn_lr
  distilled = distill.initial_trainable(jax.random.key(1), plan)
  distilled = {
    **distilled,
    "images": jax.tree.map(lambda x: 2.0 * x + 1.0, distilled["images"]),
    "labels": distilled["labels"] + 3.0,
  }
  _save_set(
    tmp_path / "soft", plan, distilled, labels=distilled["labels"], lr=0.125
  )
  _starting_from(config, tmp_path / "soft")
  started = distill.initial_trainable(
    jax.random.key(2), distill.make_plan(config, check_inputs=False)
  )
  chex.assert_trees_all_close(started["images"], distilled["images"])
  chex.assert_trees_all_close(started["labels"], distilled["labels"])
  np.testing.assert_allclose(np.exp(started["log_lr"]), 0.125, rtol=1e-6)
  # A set of hard labels and no lr: the run's label init and lr_student.
  hard = np.repeat(np.arange(plan.num_classes), plan.images_per_class)
  _save_set(tmp_path / "hard", plan, distilled, labels=hard, lr=None)
  config.synset.init_set = str(tmp_path / "hard")
  config.labels.init = "onehot"
  started = distill.initial_trainable(
    jax.random.key(2), distill.make_plan(config, check_inputs=False)
  )
  chex.assert_trees_all_close(started["images"], distilled["images"])
  chex.assert_trees_all_close(
    started["labels"],
    labels_lib.init_soft(
      jax.random.key(0),
      num_classes=plan.num_classes,
      images_per_class=plan.images_per_class,
      method="onehot",
    ),
  )
  np.testing.assert_allclose(
    np.exp(started["log_lr"]), config.distill.lr_student, rtol=1e-6
  )


def _coreset(path, plan, per_class):
  """A class-major coreset of the plan's data, `per_class` images a class."""
  index = np.stack(
    [
      np.flatnonzero(plan.dataset.train_labels == c)[:per_class]
      for c in range(plan.num_classes)
    ]
  ).reshape(-1)
  chosen = synset.SyntheticSet(
    images=plan.dataset.train_images[index],
    labels=plan.dataset.train_labels[index],
    param="coreset",
    storage_floats=int(plan.dataset.train_images[index].size),
    dataset=plan.dataset.metadata(),
  )
  synset.save(path, chosen)
  return chosen


@pytest.mark.parametrize("arg", ["param=pixels", "param=mappers,rank=2"])
def test_a_coreset_starts_a_run_as_real_images_would(arg, tmp_path):
  config = _config(arg)
  plan = distill.make_plan(config)
  chosen = _coreset(tmp_path / "coreset", plan, plan.images_per_class)
  _starting_from(config, tmp_path / "coreset")
  started = distill.initial_trainable(
    jax.random.key(3), distill.make_plan(config)
  )
  chex.assert_trees_all_close(
    plan.reconstructor.materialize(started["images"]),
    plan.reconstructor.materialize(
      plan.reconstructor.init(
        jax.random.key(0),
        num_classes=plan.num_classes,
        images_per_class=plan.images_per_class,
        image_shape=plan.dataset.image_shape,
        method="real",
        real_images=jnp.asarray(chosen.images),
        **parameterize.kind_kwargs(
          plan.budget.param,
          rank=plan.budget.rank,
          num_sets=plan.budget.num_sets,
        ),
      )
    ),
    atol=1e-5,
  )
  if plan.budget.param == "pixels":
    chex.assert_trees_all_equal(started["images"]["images"], chosen.images)
  # One image a class too many: refused, naming what fits.
  _coreset(tmp_path / "more", plan, plan.images_per_class + 1)
  config.synset.init_set = str(tmp_path / "more")
  with pytest.raises(
    ValueError,
    match=rf"'coreset' set of .*{plan.images_per_class} of each of the 10",
  ):
    distill.make_plan(config)


@pytest.mark.parametrize(
  "arg, init, set_path, message",
  [
    ("", "set", "", r"synset.init 'set'.*synset.init_set"),
    ("", "real", "run", r"synset.init_set .* synset.init='set'"),
    ("", "lots", "", r"synset.init 'lots'.*'set'"),
    ("", "set", "nowhere", r"synset.init_set .*not an exported set"),
    ("validation=5", "set", "run", r"validation_per_class 0 \(this run: 5"),
    ("param=pixels", "set", "run", r"holds a 'factors' set.*'pixels'"),
    ("rank=1", "set", "run", r"synset.init_set .*shapes.*synset.ipc / rank"),
  ],
)
def test_a_starting_set_that_does_not_fit_is_refused_before_compute(
  finished_run, tmp_path, arg, init, set_path, message
):
  config = _config(arg)
  path = {"": "", "run": finished_run[0] / "synset"}.get(
    set_path, tmp_path / set_path
  )
  config.synset.update(init=init, init_set=str(path))
  with pytest.raises(ValueError, match=message):
    distill.run(config, tmp_path / "refused")
  assert not (tmp_path / "refused").exists()


class GuardedUpdateVariantsTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_guarded_update_applies_finite_and_refuses_bad_updates(self):
    optimizer = distill.make_optimizer({"images": (0.1, 0.0)})
    state = distill.init_state({"images": {"x": jnp.ones(3)}}, optimizer)
    grads = {"images": {"x": jnp.full(3, 2.0)}}
    update = self.variant(
      lambda state, loss, grads: distill.guarded_update(
        state, loss, grads, optimizer, max_loss=10.0
      )
    )
    new, refused = update(state, jnp.float32(1.0), grads)
    assert not bool(refused) and int(new.skipped) == 0
    np.testing.assert_allclose(new.trainable["images"]["x"], 0.8)
    for loss, bad_grads in (
      (jnp.float32(jnp.inf), grads),
      (jnp.float32(11.0), grads),
      (jnp.float32(1.0), {"images": {"x": jnp.array([0.0, jnp.nan, 0.0])}}),
    ):
      kept, refused = update(state, loss, bad_grads)
      assert bool(refused) and int(kept.skipped) == 1
      chex.assert_trees_all_equal(kept.trainable, state.trainable)
      chex.assert_trees_all_equal(kept.opt_state, state.opt_state)


@pytest.mark.parametrize("name", sorted(distill.OBJECTIVES))
def test_step_builders_take_keywords_that_the_settings_give(name):
  objective = distill.OBJECTIVES[name]
  parameters = inspect.signature(objective.make_step).parameters
  assert "config" not in parameters
  keywords = {
    p.name
    for p in parameters.values()
    if p.kind is p.KEYWORD_ONLY and p.name != "mesh"
  }
  config = {
    "dm": dm_config,
    "gm": gm_config,
    "tm": tm_config,
    "bptt": bptt_config,
  }[name]
  settings = objective.settings(config.get_config("runlocal=true"))
  assert set(settings) == keywords


def _settings(plan) -> dict:
  """What the plan resolved besides data and modules, copied."""
  return copy.deepcopy(
    {
      "step": plan.step,
      "inputs": plan.inputs,
      "optimizer": plan.optimizer,
      "evaluation": plan.evaluation,
      "schedule": dataclasses.asdict(plan.schedule),
      "init": (plan.image_init, plan.label_init, plan.lr_init),
    }
  )


def test_after_the_plan_only_the_plan_is_read():
  # The plan is the config's seam: changing the config after `make_plan`
  # changes nothing the initial state, optimiser, step or evaluation use.
  config = tm_config.get_config("runlocal=true,variant=mtt_lss")
  plan = distill.make_plan(config, check_inputs=False)
  before = _settings(plan)
  config.distill.update(
    lr_images=123.0, lr_lr=7.0, syn_steps=99, lr_mappers=55.0
  )
  config.labels.update(lr=5.0, init="uniform")
  config.eval.update(epochs=1234)
  assert _settings(plan) == before
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  assert distill.optimizer_groups(plan, trainable) == {
    "images": (plan.optimizer["images"]),
    "labels": (plan.optimizer["labels"]),
    "log_lr": (plan.optimizer["log_lr"]),
    "mappers": (plan.optimizer["mappers"]),
  }
  assert plan.optimizer["images"][0] != 123.0
  assert plan.optimizer["mappers"][0] != 55.0
  assert plan.step["syn_steps"] != 99 and plan.evaluation["epochs"] != 1234


@pytest.mark.parametrize("name", sorted(distill.OBJECTIVES))
def test_nothing_after_the_plan_takes_a_config(name):
  objective = distill.OBJECTIVES[name]
  after_plan = [
    objective.make_step,
    objective.inputs,
    objective.check_plan,
    objective.check_mesh,
    distill.initial_state,
    distill.initial_trainable,
    distill.optimizer_groups,
  ]
  for fn in after_plan:
    assert "config" not in inspect.signature(fn).parameters, fn


def _trainable(plan, **extra):
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  return {**trainable, **extra}


def test_a_healthy_set_passes_the_result_check_and_skips_warn():
  plan = distill.make_plan(_config())
  trainable = _trainable(plan)
  check = distill.export.check_result
  assert check(trainable, plan, skipped=0, iterations=10) == []
  (warning,) = check(trainable, plan, skipped=3, iterations=10)
  assert "3 of 10 updates (30%)" in warning


@pytest.mark.parametrize(
  "damage,message",
  [
    (lambda t: {**t, "log_lr": jnp.float32(-1e3)}, "learned lr is 0.0"),
    (lambda t: {**t, "log_lr": jnp.float32(jnp.nan)}, "non-finite"),
    (
      lambda t: jax.tree.map(lambda x: x.at[0].set(jnp.inf), t),
      "non-finite values",
    ),
    (lambda t: jax.tree.map(lambda x: x * 1e10, t), "far outside the real"),
  ],
)
def test_a_degenerate_set_is_refused_naming_what_collapsed(damage, message):
  plan = distill.make_plan(_config())
  trainable = damage(_trainable(plan))
  with pytest.raises(distill.export.DegenerateResultError, match=message):
    distill.export.check_result(trainable, plan, skipped=0, iterations=5)


def test_a_run_whose_every_update_was_skipped_fails_and_keeps_its_checkpoint(
  tmp_path,
):
  with pytest.raises(distill.export.DegenerateResultError, match="every one"):
    distill.run(_config(max_loss=1e-30), tmp_path)
  assert (tmp_path / "checkpoints").is_dir()
  assert not (tmp_path / "synset").exists()
  assert not (tmp_path / "results.json").exists()


def test_adam_groups_take_lr_sized_steps_whatever_the_gradient_scale():
  optimizer = distill.make_optimizer(
    {"images": (0.01, 0.5), "log_lr": (0.1, 0.5)}, kind="adam"
  )
  params = {"images": jnp.zeros(3), "log_lr": jnp.float32(0.0)}
  grads = {"images": jnp.array([1e-6, -1e3, 0.0]), "log_lr": jnp.float32(5.0)}
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["images"], [-0.01, 0.01, 0.0], atol=1e-4)
  np.testing.assert_allclose(updates["log_lr"], -0.1, rtol=1e-4)
  with pytest.raises(ValueError, match="distill.optimizer 'rmsprop'"):
    distill.make_optimizer({"images": (0.1, 0.0)}, kind="rmsprop")


def test_a_config_naming_an_unknown_optimizer_is_refused():
  config = _config()
  config.distill.optimizer = "lion"
  with pytest.raises(ValueError, match="distill.optimizer 'lion'.*'adam'"):
    distill.validate(config)
