"""Tests of coreset selection (lowrank_distill.coreset)."""

import json

import chex
import jax
import numpy as np
import pytest

from configs import coreset as coreset_config
from lowrank_distill import coreset


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
