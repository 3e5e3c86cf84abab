"""Tests of the one config identity (lowrank_distill.identity)."""

import importlib
import json
import pathlib

import ml_collections
import numpy as np
import pytest

from lowrank_distill import identity


def test_diff_lists_changed_added_and_removed_fields():
  diffs = identity.diff(
    {"a": 1, "b": {"c": 2}, "e": [1, 2]}, {"a": 1, "d": "x", "e": [1, 3]}
  )
  assert diffs == [
    "d <absent> != 'x'",
    "e [1, 2] != [1, 3]",
    "b {'c': 2} != <absent>",
  ]


def test_diff_compares_a_dict_against_a_value_as_a_whole():
  diffs = identity.diff({"zca": None}, {"zca": {"flavour": "mtt"}})
  assert diffs == ["zca None != {'flavour': 'mtt'}"]


def test_diff_ignores_fields_and_their_subfields():
  saved = {"eval": {"num_models": 5}, "mesh": {"data": 1}, "seed": 0}
  current = {"eval": {"num_models": 20}, "mesh": {"data": 4}, "seed": 1}
  assert identity.diff(saved, current, ignore=("eval", "mesh.data")) == [
    "seed 0 != 1"
  ]


def test_identity_drops_resumable_fields_but_not_lookalikes():
  config = {"distill": {"iterations": 10, "iterations_x": 3}, "seed": 0}
  assert identity.identity(config, ["distill.iterations"]) == {
    "distill.iterations_x": 3,
    "seed": 0,
  }


def test_to_json_types_turns_configs_tuples_and_arrays_into_json():
  config = ml_collections.ConfigDict({"a": (1, 2), "b": np.arange(2)})
  assert identity.to_json_types({"config": config, "t": (3,)}) == {
    "config": {"a": [1, 2], "b": [0, 1]},
    "t": [3],
  }
  with pytest.raises(TypeError, match="object is not JSON serialisable"):
    identity.to_json_types({"x": object()})


def test_an_added_field_at_its_old_value_keeps_old_identities():
  old = {"dataset": {"name": "mnist"}, "seed": 0}
  new = {"dataset": {"name": "mnist", "validation_per_class": 0}, "seed": 0}
  assert not identity.diff(identity.identity(old), identity.identity(new))
  assert not identity.diff(new, old)
  held = {"dataset": {"name": "mnist", "validation_per_class": 20}, "seed": 0}
  assert identity.diff(identity.identity(old), identity.identity(held)) == [
    "dataset.validation_per_class <absent> != 20"
  ]


# The default configs as written by the code at 521c488 (before session
# 22's DM options and session 23's `synset.init_set`):
# `configs.<module>.get_config('').to_json()` at that commit.
OLD_CONFIGS = pathlib.Path(__file__).parent / "fixtures" / "configs_before_s22"


@pytest.mark.parametrize("module", ["dm", "gm", "tm", "bptt"])
def test_a_run_written_before_fields_were_added_still_resumes(module):
  saved = json.loads((OLD_CONFIGS / f"{module}.json").read_text())
  current = json.loads(
    importlib.import_module(f"configs.{module}").get_config("").to_json()
  )
  missing = [d for d in identity.diff(saved, current) if "<absent>" in d]
  assert not missing, (
    "fields added to the configs without their old-behaviour value in "
    f"identity.ADDED_FIELDS: {missing}"
  )
