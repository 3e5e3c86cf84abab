"""Tests of the shared checks (lowrank_distill.checks)."""

import numpy as np
import pytest

from lowrank_distill import checks


def test_check_choice_names_the_field_value_and_valid_values():
  checks.check_choice("distill.start", "uniform", ("uniform", "progressive"))
  with pytest.raises(ValueError) as error:
    checks.check_choice("distill.start", "cosine", {"uniform": 0, "prog": 1})
  assert str(error.value) == (
    "distill.start 'cosine' is not known; valid: ['uniform', 'prog']"
  )


@pytest.mark.parametrize("value", [1, 7, np.int32(3)])
def test_positive_int_accepts_integers(value):
  assert checks.positive_int("ipc", value) == int(value)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "3", None])
def test_positive_int_refuses_the_rest(value):
  with pytest.raises(ValueError, match="ipc must be an integer >= 1, got "):
    checks.positive_int("ipc", value)
  assert checks.positive_int("epochs", 0, minimum=0) == 0
