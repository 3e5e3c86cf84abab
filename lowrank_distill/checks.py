"""The checks behind the library's "X is not known; valid: [...]" errors.

Every check of a name against a registry, and of a count, goes through
here, so that each such error names the field and the allowed values the
same way, before any compute starts.
"""

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
