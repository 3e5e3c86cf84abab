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


@pytest.mark.parametrize(
  "allowed,good,bad,words",
  [
    (checks.RATE, [1e-6, 3, 0.5], [0, -0.01, float("nan"), True], "> 0"),
    (checks.MOMENTUM, [0, 0.5, 0.99], [1, 1.5, -0.1, float("inf")], "< 1"),
    (checks.COUNT, [1, np.int64(4)], [0, -1, 1.0, 2.5, True, "3"], ">= 1"),
    (checks.count_or(0, "off"), [0, 5], [-1, 0.0], "or 0 (off)"),
    (checks.count_or(-1, "every device"), [-1, 2], [0, -2], "or -1"),
    (checks.NON_NEGATIVE, [0, 0.0, 2], [-1e-9, None], ">= 0"),
  ],
)
def test_ranges_allow_what_they_describe(allowed, good, bad, words):
  assert words in allowed.describe()
  for value in good:
    checks.check_range("f", value, allowed)
  for value in bad:
    with pytest.raises(ValueError) as error:
      checks.check_range("a.field", value, allowed)
    assert str(error.value) == (
      f"a.field must be {allowed.describe()}; got {value!r}"
    )


def test_check_ranges_names_the_nested_field_and_skips_absent_ones():
  config = {"eval": {"lr": 0.1, "epochs": 0}}
  ranges = {"eval.lr": checks.RATE, "eval.epochs": checks.COUNT}
  with pytest.raises(ValueError, match=r"^memories\.dm\.eval\.epochs must"):
    checks.check_ranges(config, ranges, prefix="memories.dm.")
  checks.check_ranges({"eval": {"lr": 0.1}}, ranges)
  checks.check_ranges({}, {"distill.batch_syn": checks.COUNT})
