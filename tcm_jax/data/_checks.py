"""Argument checks the data modules share."""

from __future__ import annotations

import operator

import numpy as np


def as_int(name: str, value, expected: str) -> int:
  """`value` as a Python int; `expected` describes it in the error."""
  # operator.index accepts bools, which are never a meaningful count here.
  if not isinstance(value, (bool, np.bool_)):
    try:
      return operator.index(value)
    except TypeError:
      pass
  raise ValueError(f'{name} must be {expected}, got {value!r}.')


def check_int(name: str, value, minimum: int | None = None) -> int:
  """`value` as a Python int, at least `minimum` when one is given."""
  expected = 'an integer' if minimum is None else f'an integer >= {minimum}'
  value = as_int(name, value, expected)
  if minimum is not None and value < minimum:
    raise ValueError(f'{name} must be {expected}, got {value}.')
  return value
