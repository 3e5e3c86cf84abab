"""Tests of class-incremental GDumb (lowrank_distill.continual)."""

import json
import shutil

import chex
import jax
import numpy as np
import pytest

from configs import continual as continual_config
from lowrank_distill import checkpoint, continual, data, synset
from lowrank_distill.continual import memories as continual_memories

TINY = {"width": 8, "depth": 1}


def _config(arg="methods=random+lodm"):
  config = continual_config.get_config(f"steps=2,ipc=1,runlocal=true,{arg}")
  # The protocol and DM are tested in their own files; keep compiles small.
  config.eval.update(epochs=2, num_models=1, dsa_strategy="none")
  config.model.options.update(TINY)
  config.model.conv_impl = "xla"
  for name in config.continual.methods:
    entry = config.continual.memories[name]
    if entry.kind in ("distill", "trajectory"):
      entry.config.model.options.update(TINY)
      entry.config.distill.update(iterations=2, dsa_strategy="none")
    if entry.kind == "trajectory":
      entry.experts.model.options.update(TINY)
      entry.experts.experts.update(dsa_strategy="none")
  return config


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_class_orders_are_numpy_permutations_split_in_equal_groups(seed):
  order = continual.class_order(seed, num_classes=10)
  np.testing.assert_array_equal(
    order, np.random.RandomState(seed).permutation(10)
  )
  groups = continual.class_groups(order, steps=5)
  chex.assert_shape(groups, (5, 2))
  np.testing.assert_array_equal(groups.reshape(-1), order)


def test_plan_uses_the_configured_order_seeds():
  config = _config()
  config.continual.orders = [0, 3]
  plan = continual.make_plan(config)
  assert list(plan.groups) == [0, 3]
  for seed, groups in plan.groups.items():
    np.testing.assert_array_equal(
      groups.reshape(-1), np.random.RandomState(seed).permutation(10)
    )


def test_class_subset_relabels_and_keeps_the_preprocessing(digits):
  classes = np.array([7, 2, 5])
  subset = continual.class_subset(digits, classes)
  assert subset.num_classes == 3
  assert subset.mean == digits.mean and subset.std == digits.std
  for split in ("train", "test"):
    images = getattr(subset, f"{split}_images")
    labels = getattr(subset, f"{split}_labels")
    members = continual.class_members(
      getattr(digits, f"{split}_labels"), classes
    )
    np.testing.assert_array_equal(
      images, getattr(digits, f"{split}_images")[members]
    )
    np.testing.assert_array_equal(
      classes[labels], getattr(digits, f"{split}_labels")[members]
    )
    assert set(labels.tolist()) == {0, 1, 2}


def test_testing_uses_the_seen_classes_only(digits):
  seen = np.array([3, 8])
  _, labels = continual.seen_test_set(digits, seen)
  assert set(labels.tolist()) == {3, 8}
  assert labels.size == np.isin(digits.test_labels, seen).sum()
  # A model that always answers 3 scores the share of 3s among seen tests.
  assert np.mean(labels == 3) == pytest.approx(
    np.sum(digits.test_labels == 3) / labels.size
  )


def test_soft_labels_map_to_global_columns_with_zero_mass_elsewhere():
  logits = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
  mapped = continual.global_labels(logits, [6, 1], num_classes=10)
  chex.assert_shape(mapped, (2, 10))
  probs = np.asarray(jax.nn.softmax(mapped))
  np.testing.assert_allclose(
    probs[:, [6, 1]], jax.nn.softmax(logits), rtol=1e-6
  )
  assert np.all(probs[:, [0, 2, 3, 4, 5, 7, 8, 9]] == 0.0)
  hard = continual.global_labels(np.array([1, 0]), [6, 1], num_classes=10)
  np.testing.assert_array_equal(hard, [1, 6])
  memories = [
    synset.SyntheticSet(np.zeros((2, 8, 8, 1)), lab, "pixels", 0, {})
    for lab in (hard, mapped)
  ]
  images, labels = continual.merge_memories(memories, num_classes=10)
  chex.assert_shape((images, labels), ((4, 8, 8, 1), (4, 10)))
  np.testing.assert_array_equal(
    np.asarray(jax.nn.softmax(labels[:2])), np.eye(10)[[1, 6]]
  )


def test_a_random_coreset_memory_holds_global_training_images(digits):
  classes = np.array([4, 9])
  memory = continual.coreset_memory(
    jax.random.key(0), digits, classes, method="random", ipc=3
  )
  indices = np.asarray(memory.info["indices"])
  np.testing.assert_array_equal(memory.labels, digits.train_labels[indices])
  np.testing.assert_array_equal(memory.images, digits.train_images[indices])
  np.testing.assert_array_equal(memory.labels, [4, 4, 4, 9, 9, 9])
  assert memory.storage_floats == 2 * 3 * 64


@pytest.mark.parametrize("ipc", [1, 10])
def test_every_memory_gets_the_same_storage_per_class(ipc):
  methods = "random+herding+kcenter+forgetting+dm+lodm"
  config = continual_config.get_config(
    f"steps=2,ipc={ipc},runlocal=true,methods={methods}"
  )
  plan = continual.make_plan(config)
  assert plan.budget_per_class == ipc * 64
  for name, memory in plan.memories.items():
    assert memory.floats_per_class == ipc * 64, name
  # Rank-2 factors on 8x8: 32 floats an image, twice the images of pixels.
  assert plan.memories["lodm"].images_per_class == 2 * ipc
  assert plan.memories["dm"].images_per_class == ipc


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """One uninterrupted two-step run, shared by the tests that read it."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, continual.run(_config(), workdir)


def test_a_two_step_run_writes_results_and_the_plot(finished_run):
  workdir, summary = finished_run
  saved = json.loads((workdir / "results.json").read_text())
  assert saved == json.loads(json.dumps(summary))
  assert (workdir / "config.json").exists()
  assert (workdir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert list(saved["methods"]) == ["random", "lodm"]
  for result in saved["methods"].values():
    assert result["classes_seen"] == [5, 10]
    assert len(result["mean"]) == len(result["std"]) == 2
    assert all(0.0 <= a <= 1.0 for a in result["mean"])
    assert np.shape(result["per_order"]["0"]["accuracies"]) == (2, 1)
  assert (
    saved["class_orders"]["0"]
    == np.random.RandomState(0).permutation(10).tolist()
  )
  step_1 = workdir / "order_0" / "step_1"
  assert (step_1 / "lodm" / "distill" / "synset").exists()
  assert (step_1 / "random" / "memory.png").exists()


def test_memories_cover_exactly_the_seen_classes(finished_run, digits):
  workdir, summary = finished_run
  groups = np.asarray(summary["class_orders"]["0"]).reshape(2, 5)
  for name in ("random", "lodm"):
    seen = set()
    for t in (1, 2):
      where = continual.step_dir(workdir, order=0, step=t, method=name)
      memory = synset.load(where / "memory")
      assert set(memory.labels.tolist()) == set(groups[t - 1].tolist())
      assert memory.storage_floats / 5 == 64  # the budget of ipc=1 on 8x8
      seen |= set(memory.labels.tolist())
      assert seen == set(groups[:t].reshape(-1).tolist())
      result = json.loads((where / "eval.json").read_text())
      assert sorted(result["classes_seen"]) == sorted(seen)
      assert result["num_test"] == np.isin(digits.test_labels, list(seen)).sum()
  lodm = synset.load(
    continual.step_dir(workdir, order=0, step=1, method="lodm") / "memory"
  )
  assert lodm.param == "factors" and lodm.images.shape[0] == 10


def test_a_run_resumed_after_step_one_reuses_it_and_matches(
  finished_run, tmp_path, monkeypatch
):
  straight_dir, straight = finished_run
  workdir = tmp_path / "resumed"
  shutil.copytree(straight_dir, workdir)
  # "Killed" after step 1: nothing of step 2 or the summary was written.
  shutil.rmtree(workdir / "order_0" / "step_2")
  (workdir / "results.json").unlink()
  (workdir / "accuracy.png").unlink()
  step_1 = workdir / "order_0" / "step_1"
  before = {p: p.stat().st_mtime_ns for p in step_1.rglob("*")}
  built = []
  # Patched where the memory kinds look them up.
  for name in ("coreset_memory", "distill_memory"):
    original = getattr(continual_memories, name)
    monkeypatch.setattr(
      continual_memories,
      name,
      lambda *a, _f=original, _n=name, **k: built.append(_n) or _f(*a, **k),
    )
  resumed = continual.run(_config(), workdir)
  assert sorted(built) == ["coreset_memory", "distill_memory"]  # step 2 only
  assert {p: p.stat().st_mtime_ns for p in step_1.rglob("*")} == before
  assert resumed == straight
  for name in ("random", "lodm"):
    memories = [
      synset.load(
        continual.step_dir(d, order=0, step=2, method=name) / "memory"
      )
      for d in (straight_dir, workdir)
    ]
    np.testing.assert_array_equal(memories[0].images, memories[1].images)


def test_a_workdir_of_another_config_is_refused_untouched(finished_run):
  workdir, _ = finished_run
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  config = _config()
  config.continual.memories.random.method = "herding"
  with pytest.raises(
    checkpoint.CheckpointError, match="memories.random.method"
  ):
    continual.run(config, workdir)
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.parametrize(
  "change,field",
  [
    (lambda c: c.continual.update(steps=3), "continual.steps"),
    (lambda c: c.continual.update(ipc=1000), "continual.ipc"),
    (
      lambda c: c.continual.update(methods=["random", "gdumb"]),
      "continual.methods",
    ),
    (
      lambda c: c.continual.memories.random.update(method="best"),
      "continual.memories.random.method",
    ),
    (
      lambda c: c.continual.memories.lodm.config.synset.update(ipc=2),
      "continual.memories.lodm.config.synset",
    ),
    (
      lambda c: c.continual.memories.lodm.config.synset.update(rank=9),
      "continual.memories.lodm.config",
    ),
    (lambda c: c.continual.update(orders=[]), "continual.orders"),
  ],
)
def test_bad_config_values_are_refused_before_compute(tmp_path, change, field):
  config = _config()
  change(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    continual.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_unknown_method_names_are_refused_by_the_config():
  with pytest.raises(ValueError, match="valid.*'random'.*'lodm'"):
    continual_config.get_config("methods=random+dsa_typo")


def test_a_trajectory_memory_trains_experts_on_its_classes_then_distils(
  tmp_path, digits
):
  config = _config("methods=mtt_lss")
  entry = config.continual.memories.mtt_lss
  classes = np.array([7, 2, 5])

  def build():
    # What `run` calls for a step's memory of kind 'trajectory'.
    return continual.MEMORY_KINDS["trajectory"].build(
      jax.random.key(0),
      entry,
      config=config,
      dataset=digits,
      classes=classes,
      where=tmp_path,
    )

  memory = build()
  buffer = json.loads((tmp_path / "experts" / "buffer.json").read_text())
  # The experts saw the step's 3 classes only, relabelled 0..2.
  assert buffer["identity"]["dataset"]["num_classes"] == 3
  assert buffer["identity"]["model"]["options"]["width"] == TINY["width"]
  distilled = json.loads((tmp_path / "distill" / "config.json").read_text())
  assert distilled["experts"]["path"] == str((tmp_path / "experts").absolute())
  assert memory.param == "mappers" and memory.info["method"] == "tm"
  assert memory.storage_floats <= continual.budget_floats(
    ipc=1, num_classes=3, image_shape=digits.image_shape
  )
  soft = np.asarray(memory.labels)
  assert soft.shape[1] == 10  # global columns of the learned logits
  assert set(np.argmax(soft, -1).tolist()) <= set(classes.tolist())

  def expert_files():
    return {
      p: p.stat().st_mtime_ns
      for p in (tmp_path / "experts").glob("expert_*/**/*")
    }

  saved = expert_files()
  assert saved
  again = build()  # resumes: the experts and the distillation are done
  assert expert_files() == saved  # no expert was trained again
  np.testing.assert_array_equal(again.images, memory.images)


@pytest.mark.parametrize(
  "change,field",
  [
    (
      lambda c: c.continual.memories.mtt.experts.experts.update(epochs=1),
      "continual.memories.mtt.experts.experts.epochs",
    ),
    (
      lambda c: c.continual.memories.mtt.experts.model.options.update(width=4),
      "continual.memories.mtt.experts.model",
    ),
    (
      lambda c: c.continual.memories.mtt.config.update(method="dm"),
      "continual.memories.mtt.config.method",
    ),
    (
      lambda c: c.continual.memories.mtt.experts.experts.update(lr=0.0),
      "continual.memories.mtt.experts",
    ),
    (
      lambda c: c.continual.memories.mtt.config.experts.update(num_experts=9),
      "continual.memories.mtt.config.experts.num_experts",
    ),
  ],
)
def test_bad_trajectory_memories_are_refused_before_compute(
  tmp_path, change, field
):
  config = _config("methods=random+mtt")
  change(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    continual.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "name", ["dc", "lodc", "dsa", "lodsa", "mtt", "lomtt", "mtt_lss"]
)
def test_every_distillation_method_plans_at_the_shared_budget(name):
  config = _config(f"methods=random+{name}")
  plan = continual.make_plan(config)
  memory = plan.memories[name]
  assert memory.storage_floats <= plan.memories["random"].storage_floats
