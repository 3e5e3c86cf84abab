"""BPTT (DD, LD) as the loop sees it (lowrank_distill.distill.bptt).

The step on tiny digits settings: it traces once, DD moves the images and
the lr, LD moves the labels and leaves the images bit for bit, the
meta-gradient step lowers the meta-loss, bad values are refused by name,
and both configs run through the launcher. The meta-loss itself is tested
in bptt_test.py.
"""

import pathlib

import chex
import jax
import numpy as np
import pytest

from configs import bptt as bptt_config
from lowrank_distill import distill, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(method, **distill_overrides):
  config = bptt_config.get_config(f"runlocal=true,method={method}")
  config.model.options.update(width=4, depth=1)
  config.distill.update({"syn_steps": 2, "batch_real": 4, **distill_overrides})
  config.eval.update(epochs=1, num_models=1)
  return config


def _state_and_step(config, mesh=None):
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  objective = distill.OBJECTIVES["bptt"]
  objective.check_mesh(plan, mesh)
  step = objective.build_step(plan, optimizer, mesh=mesh)
  return plan, state, step, objective.inputs(plan, mesh)


def _moved(before, after) -> bool:
  return any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  )


def test_dd_step_traces_once_and_learns_images_and_lr():
  _, state, step, inputs = _state_and_step(_config("dd", lr_lr=1.0))
  assert set(state.trainable) == {"images", "log_lr"}
  step = jax.jit(chex.assert_max_traces(step, n=1))
  new = state
  for i in range(2):
    new, metrics = step(new, jax.random.key(i), *inputs(i))
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["skipped"])
  for group in ("images", "log_lr"):
    assert _moved(state.trainable[group], new.trainable[group]), group


def test_ld_keeps_the_real_images_bit_for_bit_and_learns_the_labels():
  plan, state, step, inputs = _state_and_step(_config("ld"))
  # The images and any hallucinators among them are frozen.
  assert plan.frozen == ("images", "hallucinators")
  assert plan.image_init == "real"
  assert set(state.trainable) == {"images", "labels"}
  new, metrics = jax.jit(step)(state, jax.random.key(0), *inputs(0))
  assert np.isfinite(float(metrics["loss"])) and not bool(metrics["skipped"])
  chex.assert_trees_all_equal(
    new.trainable["images"], state.trainable["images"]
  )
  assert _moved(state.trainable["labels"], new.trainable["labels"])


@pytest.mark.parametrize("method", ["dd", "ld"])
def test_the_update_descends_the_meta_loss(method):
  # With the same key (network, real batch, minibatches), a small step
  # along the meta-gradient lowers the loss: the step minimises it.
  config = _config(
    method,
    lr_student=0.5,
    lr_images=1.0,
    lr_lr=0.1,
    momentum=0.0,
    optimizer="sgd",
  )
  config.labels.update(lr=10.0, momentum=0.0)
  _, state, step, inputs = _state_and_step(config)
  step = jax.jit(step)
  key = jax.random.key(3)
  new, before = step(state, key, *inputs(0))
  _, after = step(new, key, *inputs(0))
  # By ~1e-3 here: thousands of float32 ulps, not rounding.
  assert float(after["loss"]) < float(before["loss"]) - 1e-4


def test_the_real_batch_and_minibatches_split_over_a_mesh_as_unsplit():
  mesh = sharding.make_mesh(4)
  config = _config("dd", batch_real=4)
  _, state, step, inputs = _state_and_step(config)
  _, state_m, step_m, inputs_m = _state_and_step(config, mesh)
  key = jax.random.key(1)
  single, metrics = jax.jit(step)(state, key, *inputs(0))
  split, metrics_m = sharding.jit(step_m, mesh)(
    sharding.put(state_m, mesh), sharding.put(key, mesh), *inputs_m(0)
  )
  np.testing.assert_allclose(metrics["loss"], metrics_m["loss"], rtol=1e-5)
  chex.assert_trees_all_close(
    single.trainable, jax.device_get(split.trainable), rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("distill.syn_steps", 0, "distill.syn_steps must"),
    ("distill.batch_syn", -1, "distill.batch_syn must"),
    ("distill.batch_real", 0, "distill.batch_real must"),
    ("distill.lr_student", 0.0, "distill.lr_student must"),
    ("distill.remat", "false", "distill.remat 'false' is not known"),
    ("labels.init", "expert", "labels.init 'expert'"),
  ],
)
def test_bad_values_are_refused_naming_the_field(field, value, message):
  # LD's soft labels for the labels' fields.
  config = _config("ld" if field.startswith("labels.") else "dd")
  section, name = field.split(".")
  with config.unlocked():
    # Replaced, not assigned: a value of another type (a config read back
    # from JSON) is what the checks must catch.
    del config[section][name]
    config[section][name] = value
  with pytest.raises(ValueError, match=message):
    distill.validate(config)


def test_frozen_images_with_nothing_else_to_learn_are_refused():
  config = _config("ld")
  config.labels.lr = 0.0
  with pytest.raises(ValueError, match="distill.learn_images False"):
    distill.validate(config)
  config = _config("dd", learn_lr=False, learn_images=False)
  with pytest.raises(ValueError, match="nothing else is learned"):
    distill.validate(config)


def test_a_batch_norm_minibatch_that_does_not_split_is_refused():
  config = _config("dd", batch_syn=3)
  config.model.options.norm = "batch"
  plan = distill.make_plan(config)
  with pytest.raises(ValueError, match="distill.batch_syn"):
    distill.OBJECTIVES["bptt"].check_mesh(plan, sharding.make_mesh(4))
  distill.OBJECTIVES["bptt"].check_mesh(plan, sharding.make_mesh(1))


@pytest.mark.parametrize(
  "method, param, labels, init, learn_lr, learn_images",
  [
    ("dd", "pixels", "hard", "noise", True, True),
    ("ld", "pixels", "soft", "real", False, False),
  ],
)
def test_config_methods(method, param, labels, init, learn_lr, learn_images):
  config = bptt_config.get_config(f"dataset=mnist,method={method}")
  assert config.method == "bptt" and config.synset.param == param
  assert config.labels.kind == labels and config.synset.init == init
  assert config.distill.learn_lr == learn_lr
  assert config.distill.learn_images == learn_images
  assert config.synset.budget == "same-images"
  assert config.distill.lr_student == (0.02 if method == "dd" else 0.01)
  assert config.distill.syn_steps == (30 if method == "dd" else 10)
  factors = bptt_config.get_config(f"method={method},param=factors")
  assert factors.synset.budget == "same-memory"
  with pytest.raises(ValueError, match="config arg method 'mtt'"):
    bptt_config.get_config("method=mtt")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dd"])
def test_one_iteration_of_each_method_runs_through_the_launcher(
  method, tmp_path, launch_distill
):
  results, output = launch_distill(
    f"configs/bptt.py:runlocal=true,method={method}", tmp_path / method
  )
  assert results["method"] == "bptt" and results["iterations"] == 1
  assert (results["lr"] is not None) == (method == "dd")
  assert "convnet:" in output


# ---------------------------------------------------------------------------
# RememberThePast (configs/rtp.py): memories through BPTT with momentum.


def test_rtp_configs_hold_memories_soft_labels_and_a_momentum_student():
  from configs import rtp as rtp_config

  config = rtp_config.get_config("variant=rtp,dataset=mnist")
  assert (config.method, config.synset.param) == ("bptt", "memories")
  assert (config.synset.num_bases, config.synset.init) == (5, "real")
  assert config.labels.kind == "soft" and config.distill.learn_lr
  assert config.distill.inner_momentum == rtp_config.INNER_MOMENTUM
  low = rtp_config.get_config("variant=lortp,objective=tm")
  assert (low.method, low.synset.param) == ("tm", "lowrank_memories")
  assert low.labels.kind == "soft"
  with pytest.raises(ValueError, match="config arg objective 'dm'"):
    rtp_config.get_config("objective=dm")


def test_the_student_momentum_changes_the_meta_loss():
  losses = []
  for momentum in (0.0, 0.9):
    config = _config("dd", inner_momentum=momentum)
    plan = distill.make_plan(config)
    state, optimizer = distill.initial_state(jax.random.key(0), plan)
    objective = distill.OBJECTIVES["bptt"]
    step = jax.jit(objective.build_step(plan, optimizer))
    _, metrics = step(state, jax.random.key(1), *objective.inputs(plan)(0))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and losses[0] != losses[1]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lortp"])
def test_one_iteration_of_each_rtp_variant_runs_through_the_launcher(
  variant, tmp_path, launch_distill
):
  workdir = tmp_path / variant
  results, _ = launch_distill(
    f"configs/rtp.py:runlocal=true,variant={variant}", workdir
  )
  assert results["method"] == "bptt" and results["iterations"] == 1
  param = {"rtp": "memories", "lortp": "lowrank_memories"}[variant]
  assert results["param"] == param
  assert (workdir / "images" / f"{param}_000001.png").exists()
  assert (workdir / "images" / "addresses_000001.png").exists()
