"""Tests of the synthetic-set export (lowrank_distill.synset)."""

import numpy as np
import pytest

from lowrank_distill import checkpoint, synset


def _set(**overrides):
  fields = dict(
    images=np.random.rand(4, 8, 8, 1).astype(np.float32),
    labels=np.array([0, 0, 1, 1], np.int32),
    param="factors",
    params={"a": np.ones((4, 1, 8, 2), np.float32)},
    storage_floats=128,
    dataset={"name": "digits", "num_classes": 2},
    lr=0.02,
    info={"method": "dm"},
  )
  fields.update(overrides)
  return synset.SyntheticSet(**fields)


def test_round_trip(tmp_path):
  original = _set()
  synset.save(tmp_path / "s", original)
  loaded = synset.load(tmp_path / "s")
  np.testing.assert_array_equal(loaded.images, original.images)
  np.testing.assert_array_equal(loaded.labels, original.labels)
  np.testing.assert_array_equal(loaded.params["a"], original.params["a"])
  assert (loaded.param, loaded.lr, loaded.num_classes) == ("factors", 0.02, 2)
  assert loaded.info == {"method": "dm"}


def test_soft_labels_and_no_params(tmp_path):
  logits = np.random.randn(4, 2).astype(np.float32)
  synset.save(tmp_path / "s", _set(labels=logits, params=None, lr=None))
  loaded = synset.load(tmp_path / "s")
  np.testing.assert_allclose(loaded.labels, logits)
  assert loaded.params is None and loaded.lr is None


def test_existing_sets_are_not_overwritten_and_foreign_ones_refused(tmp_path):
  synset.save(tmp_path / "s", _set())
  with pytest.raises(Exception, match="s"):
    synset.save(tmp_path / "s", _set())
  checkpoint.save_tree(tmp_path / "other", {"x": np.zeros(2)}, metadata={})
  with pytest.raises(checkpoint.CheckpointError, match="not a synthetic set"):
    synset.load(tmp_path / "other")
