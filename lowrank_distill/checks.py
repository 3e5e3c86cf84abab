"""The checks behind the library's "X is not known; valid: [...]" errors.

Every check of a name against a registry, of a count, and of a numeric
field against its range (`Range`, `check_ranges`) goes through here, so
that each such error names the field, the value and the allowed values the
same way, before any compute starts.
"""

import dataclasses
import math
import numbers
import operator
from collections.abc import Iterable


def check_choice(field: str, value, valid: Iterable) -> None:
  """Raises ValueError naming `field` and the valid values if not in `valid`.

  Args:
    field: what the value is, as the user wrote it (e.g. `synset.budget`).
    value: the value given.
    valid: the allowed values (a registry dict's keys, a tuple, ...).
  """
  valid = list(valid)
  if value not in valid:
    raise ValueError(f"{field} {value!r} is not known; valid: {valid}")


def positive_int(field: str, value, *, minimum: int = 1) -> int:
  """`value` as an int if it is an integer >= `minimum` (not a bool).

  Raises:
    ValueError: naming `field`, the bound and the value.
  """
  try:
    result = None if isinstance(value, bool) else operator.index(value)
  except TypeError:
    result = None
  if result is None or result < minimum:
    raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
  return result


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric config field allows.

  Attributes:
    low, high: bounds (None: unbounded).
    low_open, high_open: exclude the bound (`> low`, `< high`).
    integer: the field is a count (an int, not a bool).
    also: other values allowed outside the bounds, with what they mean
      (e.g. `{0: 'off'}`, `{-1: 'every device'}`).
  """

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  also: tuple[tuple[float, str], ...] = ()

  def describe(self) -> str:
    """The allowed values in words, e.g. 'an integer >= 1, or 0 (off)'."""
    kind = "an integer" if self.integer else "a number"
    bounds = []
    if self.low is not None:
      bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
    if self.high is not None:
      bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
    text = f"{kind} {' and '.join(bounds)}".rstrip()
    for value, meaning in self.also:
      text += f", or {value:g} ({meaning})"
    return text

  def allows(self, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return False
    if self.integer and not isinstance(value, numbers.Integral):
      return False
    if any(value == v for v, _ in self.also):
      return True
    if not math.isfinite(value):
      return False
    if self.low is not None and (
      value < self.low or (self.low_open and value == self.low)
    ):
      return False
    return self.high is None or not (
      value > self.high or (self.high_open and value == self.high)
    )


RATE = Range(low=0, low_open=True)  # learning rates, thresholds: > 0
NON_NEGATIVE = Range(low=0)  # weight decay, offsets
MOMENTUM = Range(low=0, high=1, high_open=True)  # SGD momentum: [0, 1)
COUNT = Range(low=1, integer=True)  # sizes, epochs, steps, intervals
ANY_INT = Range(integer=True)


def count_or(value: int, meaning: str) -> Range:
  """A count >= 1, or `value` with its `meaning` (e.g. 0, 'off')."""
  return Range(low=1, integer=True, also=((value, meaning),))


def check_range(field: str, value, allowed: Range) -> None:
  """Raises ValueError naming `field`, `value` and what `allowed` allows."""
  if not allowed.allows(value):
    raise ValueError(f"{field} must be {allowed.describe()}; got {value!r}")


def lookup(config, field: str):
  """The value at dotted `field` of a ConfigDict or dict; KeyError if none."""
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def check_ranges(config, ranges: dict[str, Range], *, prefix: str = "") -> None:
  """`check_range` for every field of `ranges` that `config` holds.

  Args:
    config: a run config (ConfigDict or dict).
    ranges: dotted field -> its `Range`.
    prefix: put before each field in errors (a nested config's place, e.g.
      `continual.memories.dm.config.`).
  """
  for field, allowed in ranges.items():
    try:
      value = lookup(config, field)
    except (KeyError, AttributeError):
      continue
    check_range(prefix + field, value, allowed)
