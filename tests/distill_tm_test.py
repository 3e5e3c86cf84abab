"""Trajectory matching as the loop sees it (lowrank_distill.distill.tm).

A tiny expert buffer on digits, then MTT, LoMTT and MTT-LSS through the
step, the snapshot feeder, the guards and the launcher. The pure unroll and
start schedules are tested in trajectory_matching_test.py.
"""

import json
import pathlib
import subprocess
import sys

import chex
import jax
import label_experts_helpers
import numpy as np
import pytest

from configs import experts as experts_config
from configs import haba as haba_config
from configs import tm as tm_config
from lowrank_distill import checkpoint, distill, experts

REPO = pathlib.Path(__file__).resolve().parents[1]


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


# One variant through the launcher (each costs a process and its compiles):
# MTT-LSS has mappers, soft labels and the progressive start; MTT's step
# runs in-process below, and LoMTT's factors reach the same step as a
# reconstructor (the objectives' reconstructor tests).
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mtt_lss"])
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
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  assert set(trainable) == {"images", "labels", "log_lr"}
  optimizer = distill.make_optimizer(distill.optimizer_groups(plan, trainable))
  state = distill.init_state(trainable, optimizer)
  objective = distill.OBJECTIVES["tm"]
  step = jax.jit(
    chex.assert_max_traces(objective.build_step(plan, optimizer), n=1)
  )
  inputs = objective.inputs(plan)
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
  a = distill.tm.expert_snapshots(plan)
  b = distill.tm.expert_snapshots(plan)
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
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  objective = distill.OBJECTIVES["tm"]
  step = jax.jit(objective.build_step(plan, optimizer))
  new, metrics = step(state, jax.random.key(0), *objective.inputs(plan)(0))
  assert bool(metrics["skipped"]) and int(new.skipped) == 1
  chex.assert_trees_all_equal(new.trainable, state.trainable)


def test_snapshots_above_the_host_memory_limit_are_refused(buffer_dir):
  config = _config(buffer_dir, "mtt")
  config.experts.max_host_bytes = 1000
  with pytest.raises(ValueError, match="experts.max_host_bytes"):
    distill.tm.expert_snapshots(distill.make_plan(config))


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


@pytest.mark.parametrize(
  "arg, param, labels, init, start, budget",
  [
    ("variant=mtt", "pixels", "hard", "onehot", "uniform", "same-images"),
    ("variant=lomtt", "factors", "hard", "onehot", "uniform", "same-memory"),
    (
      "variant=mtt_lss",
      "mappers",
      "soft",
      "random",
      "progressive",
      "same-memory",
    ),
    # The ablations of MTT-LSS's Table 3 and the ones the issue adds.
    (
      "variant=mtt,labels=soft",
      "pixels",
      "soft",
      "onehot",
      "uniform",
      "same-images",
    ),
    (
      "variant=mtt,start=progressive",
      "pixels",
      "hard",
      "onehot",
      "progressive",
      "same-images",
    ),
    (
      "variant=mtt,param=mappers",
      "mappers",
      "hard",
      "onehot",
      "uniform",
      "same-memory",
    ),
    (
      "variant=mtt_lss,labels=hard",
      "mappers",
      "hard",
      "random",
      "progressive",
      "same-memory",
    ),
    (
      "variant=mtt_lss,label_init=onehot",
      "mappers",
      "soft",
      "onehot",
      "progressive",
      "same-memory",
    ),
    (
      "variant=lomtt,labels=soft",
      "factors",
      "soft",
      "onehot",
      "uniform",
      "same-memory",
    ),
  ],
)
def test_config_ablation_arguments(arg, param, labels, init, start, budget):
  config = tm_config.get_config(f"dataset=mnist,{arg}")
  assert config.synset.param == param and config.synset.budget == budget
  assert config.labels.kind == labels and config.distill.start == start
  assert config.labels.init == init
  assert (config.labels.lr > 0) == (labels == "soft")
  lr = tm_config.get_config(f"dataset=mnist,{arg},lr_labels=5.0").labels.lr
  assert lr == (5.0 if labels == "soft" else 0.0)


def test_config_validation_holds_out_train_images():
  config = tm_config.get_config("dataset=digits,validation=20")
  assert config.dataset.validation_per_class == 20
  assert (
    tm_config.get_config("dataset=digits").dataset.validation_per_class == 0
  )


def test_expert_label_init_is_the_trained_experts_prediction(buffer_dir):
  config = _config(buffer_dir, "mtt_lss")
  config.labels.init = "expert"
  plan = distill.make_plan(config)
  trainable = distill.initial_trainable(jax.random.key(0), plan)
  images = plan.reconstructor.materialize(trainable["images"])
  expected = label_experts_helpers.trained_expert_predictions(
    buffer_dir, plan.model, images
  )
  chex.assert_trees_all_close(trainable["labels"], expected, atol=1e-5)
  # Not the untrained expert's (nor the random init's) logits.
  first = plan.model.apply(
    {"params": experts.open_buffer(buffer_dir).snapshot(0, 0)},
    images,
    train=True,
  )
  assert not np.allclose(trainable["labels"], first, atol=1e-3)


def test_haba_configs_hold_hallucinators_on_trajectory_matching():
  config = haba_config.get_config("variant=haba,dataset=mnist")
  assert (config.method, config.synset.param) == ("tm", "hallucinators")
  assert (config.synset.num_hallucinators, config.synset.budget) == (
    5,
    "same-images",
  )
  low = haba_config.get_config("variant=lohaba,dataset=mnist")
  assert (low.synset.param, low.synset.budget) == (
    "lowrank_hallucinators",
    "same-memory",
  )
  assert low.synset.num_hallucinators == 2
  with pytest.raises(ValueError, match="config arg variant 'hallucinate'"):
    haba_config.get_config("variant=hallucinate")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lohaba"])
def test_one_iteration_of_each_haba_variant_runs_through_the_launcher(
  variant, buffer_dir, tmp_path, launch_distill
):
  workdir = tmp_path / variant
  results, _ = launch_distill(
    f"configs/haba.py:runlocal=true,variant={variant}",
    workdir,
    f"--config.experts.path={buffer_dir}",
    "--config.distill.syn_steps=2",
    "--config.distill.expert_epochs=1",
    "--config.distill.max_start=2",
  )
  assert results["method"] == "tm" and results["iterations"] == 1
  assert results["param"] == haba_config.VARIANTS[variant][0]
  assert results["budget"]["num_hallucinators"] == 2
  assert (workdir / "images" / f"{results['param']}_000001.png").exists()
  # With HaBa's constraint (the config's default) the log holds its terms.
  (logged,) = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
    if '"loss"' in line
  ]
  assert {"club", "matching_loss", "extractor_loss"} <= set(logged)


def _haba_config(buffer_dir, **distill_fields):
  config = haba_config.get_config("runlocal=true,variant=haba")
  config.model.options.update(width=4, depth=1)
  config.experts.path = str(buffer_dir)
  config.distill.update(
    **{
      "iterations": 2,
      "syn_steps": 2,
      "expert_epochs": 1,
      "max_start": 2,
      **distill_fields,
    }
  )
  config.eval.update(epochs=1, num_models=1)
  return config


def _assert_kernels_moved(before, after):
  """Every conv and dense kernel of the extractor changed (a conv's bias
  before instance norm has no gradient)."""
  kernels = {
    jax.tree_util.keystr(path): (leaf, after_leaf)
    for (path, leaf), after_leaf in zip(
      jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after)
    )
    if "kernel" in jax.tree_util.keystr(path)
  }
  assert len(kernels) == 4  # three convs and the classifier
  for name, (a, b) in kernels.items():
    assert not np.array_equal(a, b), name


def test_haba_config_turns_the_constraint_on_and_off():
  assert haba_config.get_config().distill.club_weight == 0.1
  off = haba_config.get_config("constraint=false")
  assert off.distill.club_weight == 0.0
  assert tm_config.get_config().distill.club_weight == 0.0


def test_the_haba_constraint_trains_the_extractor_beside_the_set(buffer_dir):
  plan = distill.make_plan(_haba_config(buffer_dir))
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  assert isinstance(state, distill.DistillStateWithAux)
  assert set(state.aux) == {"params", "opt_state"}
  objective = distill.OBJECTIVES["tm"]
  step = jax.jit(
    chex.assert_max_traces(objective.build_step(plan, optimizer), n=1)
  )
  inputs = objective.inputs(plan)
  new = state
  for i in range(2):
    new, metrics = step(new, jax.random.key(i), *inputs(i))
  assert int(new.skipped) == 0 and int(new.step) == 2
  assert {"matching_loss", "club", "extractor_loss"} <= set(metrics)
  chex.assert_trees_all_close(
    metrics["loss"],
    metrics["matching_loss"] + 0.1 * metrics["club"],
    rtol=1e-6,
  )
  assert 0.0 <= float(metrics["club"]) <= 1.0
  _assert_kernels_moved(state.aux["params"], new.aux["params"])
  old_images, new_images = state.trainable["images"], new.trainable["images"]
  for name in ("bases", "hallucinators"):
    assert not np.allclose(
      jax.tree.leaves(old_images[name])[0], jax.tree.leaves(new_images[name])[0]
    ), name


def test_without_the_constraint_the_state_has_no_extractor(buffer_dir):
  # The checkpoints of runs without it keep DistillState's structure.
  plan = distill.make_plan(_haba_config(buffer_dir, club_weight=0.0))
  state, _ = distill.initial_state(jax.random.key(0), plan)
  assert type(state) is distill.DistillState


def test_a_resumed_haba_run_restores_its_extractor(buffer_dir, tmp_path):
  config = _haba_config(buffer_dir, checkpoint_every=1, image_every=0)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  distill.run(config, straight, final_eval=False)
  distill.run(_haba_config(buffer_dir, iterations=1), resumed, final_eval=False)
  distill.run(config, resumed, final_eval=False)
  plan = distill.make_plan(config)
  state, _ = distill.initial_state(jax.random.key(0), plan)
  abstract = jax.eval_shape(lambda: state)
  states = []
  for workdir in (straight, resumed):
    with checkpoint.Checkpointer(
      workdir / "checkpoints", config=distill.loop._identity_config(config)
    ) as ckpt:
      states.append(ckpt.restore(abstract, step=2)[0])
  assert isinstance(states[1], distill.DistillStateWithAux)
  chex.assert_trees_all_equal(states[0], states[1])
  _assert_kernels_moved(state.aux["params"], states[1].aux["params"])
  logged = json.loads((resumed / "metrics.jsonl").read_text().splitlines()[-1])
  assert {"club", "matching_loss", "extractor_loss"} <= set(logged)


@pytest.mark.parametrize(
  "param, hallucinators, field",
  [
    ("pixels", 5, "synset.param"),
    ("factors", 5, "synset.param"),
    ("hallucinators", 1, "synset.num_hallucinators"),
  ],
)
def test_the_haba_constraint_needs_two_hallucinators(
  param, hallucinators, field, buffer_dir
):
  config = _haba_config(buffer_dir)
  config.synset.update(param=param, num_hallucinators=hallucinators)
  with pytest.raises(ValueError, match=field):
    distill.validate(config)
