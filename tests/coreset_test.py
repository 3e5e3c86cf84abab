"""Tests of coreset selection (lowrank_distill.coreset)."""

import json

import chex
import jax
import numpy as np
import pytest

from configs import coreset as coreset_config
from lowrank_distill import coreset, evaluate, models


def test_herding_first_pick_is_nearest_the_mean_then_balances():
  features = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
  order = np.asarray(coreset.herding(features, k=4))
  # Mean 3.25. Running means: {2} -> 2; {2, 1} -> 1.5 (beats 1.0 with 0 and
  # 6.0 with 10); {2, 1, 10} -> 4.33 (beats 1.0 with 0); then 0.
  np.testing.assert_array_equal(order, [2, 1, 3, 0])


def test_kcenter_picks_the_farthest_points():
  features = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
  order = np.asarray(coreset.kcenter(features, k=3))
  np.testing.assert_array_equal(order, [2, 3, 0])


def test_most_forgotten_ranks_never_learned_first(key):
  forgetting = np.array([0, 3, 1, 0, 2])
  learned = np.array([True, True, True, False, True])
  order = np.asarray(coreset.most_forgotten(key, forgetting, learned, k=3))
  np.testing.assert_array_equal(order, [3, 1, 4])


def test_random_selection_is_class_balanced(tiny_images, key):
  images, labels = tiny_images
  idx = coreset.select(
    key, images, labels, method="random", ipc=2, num_classes=10
  )
  chex.assert_shape(idx, (10, 2))
  for c in range(10):
    assert set(labels[idx[c]].tolist()) == {c}
  assert len(set(idx.ravel().tolist())) == 20


@pytest.mark.parametrize("method", ["herding", "kcenter", "forgetting"])
def test_model_based_methods_pick_distinct_images_of_each_class(method):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 5)
  images = rng.normal(size=(50, 8, 8, 1)).astype(np.float32)
  idx = coreset.select(
    jax.random.key(0),
    images,
    labels,
    method=method,
    ipc=3,
    num_classes=10,
    model_options={"width": 8, "depth": 1},
    train_epochs=1,
  )
  chex.assert_shape(idx, (10, 3))
  for c in range(10):
    assert set(labels[idx[c]].tolist()) == {c}
    assert len(set(idx[c].tolist())) == 3


@pytest.mark.parametrize("program", [0, 1], ids=["training", "embedding"])
def test_herding_compiles_its_programs_with_the_library_options(
  monkeypatch, program
):
  # Each program's options come from `models.compiler_options`; an option
  # XLA does not know, handed to one of them, must reach its compiler.
  calls = []
  real = models.compiler_options

  def options(impl):
    calls.append(impl)
    if len(calls) - 1 == program:
      return {"xla_no_such_option_for_the_test": True}
    return real(impl)

  monkeypatch.setattr(models, "compiler_options", options)
  labels = np.repeat(np.arange(10), 2)
  images = np.random.default_rng(0).normal(size=(20, 8, 8, 1))
  with pytest.raises(Exception, match="xla_no_such_option_for_the_test"):
    coreset.select(
      jax.random.key(0),
      images.astype(np.float32),
      labels,
      method="herding",
      ipc=1,
      num_classes=10,
      model_options={"width": 4, "depth": 1},
      train_epochs=0,
      conv_impl="im2col",
    )
  assert calls[program] == "im2col"


def test_unknown_method_and_too_large_ipc_are_refused(tiny_images, key):
  images, labels = tiny_images
  with pytest.raises(ValueError, match="valid"):
    coreset.select(key, images, labels, method="best", ipc=1, num_classes=10)
  with pytest.raises(ValueError, match="ipc"):
    coreset.select(key, images, labels, method="random", ipc=3, num_classes=10)


def test_run_on_digits_writes_results_and_reuses_the_saved_coreset(tmp_path):
  config = coreset_config.get_config("method=herding,ipc=1,runlocal=true")
  summary = coreset.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert (
    saved["results"]["convnet"]["accuracies"]
    == (summary["results"]["convnet"]["accuracies"])
  )
  assert (tmp_path / "config.json").exists()
  first = (tmp_path / "synset").stat().st_mtime_ns
  again = coreset.run(config, tmp_path)
  assert (tmp_path / "synset").stat().st_mtime_ns == first
  assert again["results"] == summary["results"]


@pytest.fixture(scope="module")
def random_coreset_workdir(tmp_path_factory):
  """A workdir holding a finished random, IPC 1 coreset run on digits."""
  workdir = tmp_path_factory.mktemp("coreset")
  config = coreset_config.get_config("method=random,ipc=1,runlocal=true")
  coreset.run(config, workdir)
  return workdir, config


def _snapshot(workdir):
  """The bytes and mtimes of config.json and every synset file."""
  files = [workdir / "config.json", *sorted((workdir / "synset").rglob("*"))]
  return {
    str(p): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
    for p in files
  }


@pytest.mark.parametrize(
  "arg, field",
  [("method=herding,ipc=1", "coreset.method"), ("ipc=2", "coreset.ipc")],
)
def test_run_refuses_a_workdir_of_another_config(
  random_coreset_workdir, arg, field
):
  workdir, _ = random_coreset_workdir
  before = _snapshot(workdir)
  other = coreset_config.get_config(arg + ",runlocal=true")
  with pytest.raises(ValueError, match="another config") as error:
    coreset.run(other, workdir)
  assert str(workdir) in str(error.value)
  assert field in str(error.value)
  assert _snapshot(workdir) == before


def test_run_resumes_the_same_config_in_its_workdir(random_coreset_workdir):
  workdir, config = random_coreset_workdir
  saved = json.loads((workdir / "results.json").read_text())
  before = _snapshot(workdir)
  evaluated = (workdir / evaluate.MODEL_LOG).read_text()
  # The mesh only places the work: a rerun may change it.
  config = config.copy_and_resolve_references()
  config.mesh.data = 1
  again = coreset.run(config, workdir)
  assert again["results"] == saved["results"]
  # Neither selected nor evaluated again.
  synset = {k: v for k, v in before.items() if "synset" in k}
  assert {k: v for k, v in _snapshot(workdir).items() if k in synset} == synset
  assert (workdir / evaluate.MODEL_LOG).read_text() == evaluated
