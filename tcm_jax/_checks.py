"""Argument checks shared by every part of tcm_jax, with one message form.

A failed check says what the argument is called, what it must be and what it
was: `'{name} must be {expected}, got {received}.'`. Each check returns the
value in the form its caller goes on with (a Python int, a float, a float
pair), so that a public function validates and converts in one line.

This module checks real numbers and pairs of them, and publishes the checks
of integers, choices and types (`tcm_jax._discrete_checks`): callers use all
of them from here. `tcm_jax._array_checks` checks arrays (similarities,
embeddings, labels, masks) with the same message form.

Checks of Python scalars run at trace time: inside `jax.jit` they cost
nothing and fail before any computation. Scalars that are only known at run
time (traced values) are let through by the checks that can be traced and
refused by those that need a concrete number.

This module imports only numpy (jax is looked up only to recognise a traced
value, which exists only once jax is imported), so that the losses and
metrics, and the data modules, that use it stay light.

Examples:
  >>> from tcm_jax import _checks
  >>> _checks.check_int('seed', 3, 0)
  3
  >>> _checks.check_int('seed', -1, 0)
  Traceback (most recent call last):
  ...
  ValueError: seed must be an integer >= 0, got -1.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

# The checks of integers, choices and types, published here.
from tcm_jax._discrete_checks import as_int
from tcm_jax._discrete_checks import check_choice
from tcm_jax._discrete_checks import check_index
from tcm_jax._discrete_checks import check_int
from tcm_jax._discrete_checks import check_optional_int
from tcm_jax._discrete_checks import check_positive_ints
from tcm_jax._discrete_checks import check_rng
from tcm_jax._discrete_checks import check_type
from tcm_jax._discrete_checks import concrete_int

# Scalars.


def concrete_float(name: str, value: Any) -> float | None:
  """`value` as a Python float, or None when it is only known at run time.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.concrete_float('margin', 1)
    1.0
    >>> _checks.concrete_float('margin', '0.5')
    Traceback (most recent call last):
    ...
    TypeError: margin must be a number, got str '0.5'.
  """
  if isinstance(value, (str, bytes)):
    raise TypeError(f'{name} must be a number, got {type(value).__name__} '
                    f'{value!r}.')
  try:
    return float(value)
  except TypeError as e:
    # A traced value exists only once jax is imported; its error is a
    # TypeError.
    jax = sys.modules.get('jax')
    if jax is not None and isinstance(e, jax.errors.ConcretizationTypeError):
      return None
    raise TypeError(
        f'{name} must be a scalar, got {type(value).__name__} '
        f'{np.shape(value)}.') from e


def check_in_range(name: str, value: Any, low: float, high: float) -> None:
  """A finite number in `[low, high]`; traced values are let through.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_in_range('margin_pos', 1.5, -1.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: margin_pos must be a finite number in [-1.0, 1.0], got 1.5.
  """
  x = concrete_float(name, value)
  if x is None:
    return
  if not math.isfinite(x) or not low <= x <= high:
    raise ValueError(
        f'{name} must be a finite number in [{low}, {high}], got {value!r}.')


def check_positive(name: str, value: Any) -> float | None:
  """A finite number above 0 (None when traced, which is let through).

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_positive('temperature', 0.01)
    0.01
    >>> _checks.check_positive('beta', float('inf'))
    Traceback (most recent call last):
    ...
    ValueError: beta must be a finite positive number, got inf.
  """
  x = concrete_float(name, value)
  if x is not None and not (math.isfinite(x) and x > 0.0):
    raise ValueError(f'{name} must be a finite positive number, got {value!r}.')
  return x


def check_fraction(name: str, value: Any, *,
                   expected: str = 'in (0, 1)') -> float:
  """A concrete number strictly between 0 and 1.

  Args:
    name: the argument's name.
    value: the argument.
    expected: how the message describes the interval.

  Returns:
    `value` as a Python float.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_fraction('epsilon', 0.1)
    0.1
    >>> _checks.check_fraction('epsilon', 1.0)
    Traceback (most recent call last):
    ...
    ValueError: epsilon must be in (0, 1), got 1.0.
  """
  x = concrete_float(name, value)
  if x is None:
    raise TypeError(f'{name} must be a concrete number, got a traced value.')
  if not 0.0 < x < 1.0:  # False for nan
    raise ValueError(f'{name} must be {expected}, got {value!r}.')
  return x


def check_far(name: str, value: Any) -> float:
  """A false-accept rate: a number in `(0, 1]`.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_far('target_far', 0.0)
    Traceback (most recent call last):
    ...
    ValueError: target_far must be a false-accept rate in (0, 1], got 0.0.
  """
  far = float(value)
  if not 0.0 < far <= 1.0:
    raise ValueError(
        f'{name} must be a false-accept rate in (0, 1], got {far}.')
  return far


def check_number(name: str, value: Any, *, above: float | None = None,
                 at_least: float | None = None, at_most: float | None = None,
                 finite: bool = False, expected: str | None = None) -> float:
  """A Python or NumPy real number (not a bool) within the bounds given.

  Args:
    name: the argument's name.
    value: the argument.
    above: the value must be greater than this.
    at_least: the value must be at least this (ignored when `above` is
      given).
    at_most: the value must be at most this.
    finite: whether infinities (and NaN) are refused too; a bound refuses NaN
      already.
    expected: what the message says the value must be (default: from the
      bounds, e.g. 'a number > 0', 'a finite number >= 0', 'a number in
      (0, 1]').

  Returns:
    `value` as a Python float.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_number('width', 0, above=0)
    Traceback (most recent call last):
    ...
    ValueError: width must be a number > 0, got 0.
    >>> _checks.check_number('ink_fraction', 1.5, above=0, at_most=1)
    Traceback (most recent call last):
    ...
    ValueError: ink_fraction must be a number in (0, 1], got 1.5.
    >>> _checks.check_number('shear', float('inf'), finite=True)
    Traceback (most recent call last):
    ...
    ValueError: shear must be a finite number, got inf.
  """
  low = above if above is not None else at_least
  if expected is None:
    kind = 'a finite number' if finite else 'a number'
    if low is not None and at_most is not None:
      bracket = '(' if above is not None else '['
      expected = f'{kind} in {bracket}{low}, {at_most}]'
    elif above is not None:
      expected = f'{kind} > {above}'
    elif at_least is not None:
      expected = f'{kind} >= {at_least}'
    elif at_most is not None:
      expected = f'{kind} <= {at_most}'
    else:
      expected = kind
  real = (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))
  if real:
    x = float(value)
    ok = ((x > above) if above is not None else
          (at_least is None or x >= at_least))
    ok = (ok and (at_most is None or x <= at_most)
          and (not finite or math.isfinite(x)))
  if not real or not ok:
    raise ValueError(f'{name} must be {expected}, got {value!r}.')
  return x


def check_probability(name: str, value: Any) -> float:
  """A probability: a Python or NumPy real number (not a bool) in `[0, 1]`.

  Returns:
    `value` as a Python float.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_probability('p', 1)
    1.0
    >>> _checks.check_probability('p', 1.5)
    Traceback (most recent call last):
    ...
    ValueError: p must be a probability in [0, 1], got 1.5.
  """
  return check_number(name, value, at_least=0, at_most=1,
                      expected='a probability in [0, 1]')


# Pairs of numbers.


def as_pair(name: str, value: Any) -> tuple[float, float]:
  """`value` as a pair `(low, high)` of Python floats.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.as_pair('far_range', 0.1)
    Traceback (most recent call last):
    ...
    ValueError: far_range must be a pair (low, high), got 0.1.
  """
  try:
    low, high = (float(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f'{name} must be a pair (low, high), got {value!r}.') from e
  return low, high


def check_range(name: str, value: Any, low: float,
                high: float) -> tuple[float, float]:
  """A pair `(lo, hi)` of finite numbers with `low <= lo < hi <= high`.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_range('far_range', (0.1, 0.1), 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: far_range must satisfy 0.0 <= low < high <= 1.0, got (0.1, 0.1): empty or reversed.
  """
  lo, hi = as_pair(name, value)
  if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo < hi <= high):
    raise ValueError(
        f'{name} must satisfy {low} <= low < high <= {high}, got ({lo}, {hi}): '
        'empty or reversed.')
  return lo, hi


def check_positive_range(name: str, value: Any,
                         upper: float = math.inf) -> tuple[float, float]:
  """A pair `(low, high)` with `0 < low <= high <= upper`, `high` finite.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_positive_range('scale', (0.08, 1.0), upper=1.0)
    (0.08, 1.0)
    >>> _checks.check_positive_range('ratio', (0.0, 1.0))
    Traceback (most recent call last):
    ...
    ValueError: ratio must satisfy 0 < low <= high <= inf, got (0.0, 1.0).
  """
  low, high = as_pair(name, value)
  if not (0.0 < low <= high <= upper and math.isfinite(high)):
    raise ValueError(
        f'{name} must satisfy 0 < low <= high <= {upper}, got {value!r}.')
  return low, high
