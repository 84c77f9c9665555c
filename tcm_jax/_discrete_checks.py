"""Argument checks of discrete values: integers, indices, choices and types.

The half of `tcm_jax._checks` that is not about real numbers, with its
message form (`'{name} must be {expected}, got {received}.'`); callers use
these through `tcm_jax._checks`, which publishes them. Integers are Python
and NumPy integers (and concrete JAX integer scalars), never bools or floats
such as `3.0`.

This module imports only numpy (jax is looked up only to recognise a traced
value, which exists only once jax is imported), as `tcm_jax._checks` does.

Examples:
  >>> from tcm_jax import _checks
  >>> _checks.check_index('process_index', 1, 2)
  1
"""

from __future__ import annotations

from collections.abc import Collection
import operator
import sys
from typing import Any, TypeVar

import numpy as np

_T = TypeVar('_T')


def _index(value: Any) -> int | None:
  """`value` as a Python int if it is an integer (a bool is not), else None."""
  if isinstance(value, (bool, np.bool_)):
    return None
  try:
    return operator.index(value)
  except TypeError:
    return None


def as_int(name: str, value: Any, expected: str) -> int:
  """`value` as a Python int; `expected` describes it in the error.

  Python and NumPy integers are integers; bools and floats (even `3.0`) are
  not.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.as_int('size', 3.0, 'an integer')
    Traceback (most recent call last):
    ...
    ValueError: size must be an integer, got 3.0.
  """
  index = _index(value)
  if index is None:
    raise ValueError(f'{name} must be {expected}, got {value!r}.')
  return index


def concrete_int(name: str, value: Any) -> int | None:
  """`value` as a Python int, or None when it is an integer known only at run
  time (a traced integer scalar, as inside `jax.jit`).

  Python, NumPy and concrete JAX integer scalars are integers; bools and
  floats (even `2.0`), float arrays and traced floats are not.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _checks
    >>> _checks.concrete_int('query_offset', np.int64(4))
    4
    >>> _checks.concrete_int('query_offset', 1.5)
    Traceback (most recent call last):
    ...
    TypeError: query_offset must be an integer, got float 1.5.
  """
  index = _index(value)
  if index is not None:
    return index
  jax = sys.modules.get('jax')
  shape = np.shape(value) if hasattr(value, 'shape') else ()
  if jax is not None and isinstance(value, jax.core.Tracer):
    if shape == () and np.issubdtype(value.dtype, np.integer):
      return None
    received = f'a traced value of dtype {value.dtype}' + (
        f' and shape {shape}' if shape else '')
  elif shape:
    received = f'{type(value).__name__} of shape {shape}'
  elif hasattr(value, 'dtype'):  # a NumPy or JAX scalar
    received = f'{np.dtype(value.dtype).name} {np.asarray(value).item()!r}'
  else:
    received = 'None' if value is None else (
        f'{type(value).__name__} {value!r}')
  raise TypeError(f'{name} must be an integer, got {received}.')


def check_int(name: str, value: Any, minimum: int | None = None, *,
              expected: str | None = None) -> int:
  """`value` as a Python int, at least `minimum` when one is given.

  Args:
    name: the argument's name.
    value: the argument.
    minimum: the smallest value allowed.
    expected: what the message says the value must be (default: 'an
      integer' or 'an integer >= minimum').

  Returns:
    `value` as a Python int.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_int('num_thresholds', 1, 2)
    Traceback (most recent call last):
    ...
    ValueError: num_thresholds must be an integer >= 2, got 1.
  """
  if expected is None:
    expected = 'an integer' if minimum is None else f'an integer >= {minimum}'
  value = as_int(name, value, expected)
  if minimum is not None and value < minimum:
    raise ValueError(f'{name} must be {expected}, got {value}.')
  return value


def check_optional_int(name: str, value: Any) -> int | None:
  """None, or a positive integer as a Python int.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_optional_int('block_size', None) is None
    True
    >>> _checks.check_optional_int('block_size', 0)
    Traceback (most recent call last):
    ...
    ValueError: block_size must be a positive integer or None, got 0.
  """
  if value is None:
    return None
  return check_int(name, value, 1, expected='a positive integer or None')


def check_index(name: str, value: Any, size: int, *,
                expected: str | None = None) -> int:
  """`value` as a Python int in `[0, size)`: a position among `size` things.

  Args:
    name: the argument's name.
    value: the argument.
    size: the number of positions.
    expected: what the message says the value must be (default: 'an
      integer in [0, size)').

  Returns:
    `value` as a Python int.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_index('process_index', 1, 2)
    1
    >>> _checks.check_index('process_index', 2, 2)
    Traceback (most recent call last):
    ...
    ValueError: process_index must be an integer in [0, 2), got 2.
  """
  if expected is None:
    expected = f'an integer in [0, {size})'
  index = as_int(name, value, expected)
  if not 0 <= index < size:
    raise ValueError(f'{name} must be {expected}, got {index}.')
  return index


def check_positive_ints(name: str, values: Any) -> tuple[int, ...]:
  """A non-empty sequence of integers >= 1, as a tuple of Python ints.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_positive_ints('ks', [1, 4])
    (1, 4)
    >>> _checks.check_positive_ints('ks', (0, 2))
    Traceback (most recent call last):
    ...
    ValueError: ks must be positive integers, got (0, 2).
  """
  try:
    values = tuple(values)
  except TypeError:
    raise TypeError(
        f'{name} must be a tuple of positive integers, got {values!r}.'
    ) from None
  indices = [_index(v) for v in values]
  if not values or any(i is None or i < 1 for i in indices):
    raise ValueError(f'{name} must be positive integers, got {values}.')
  return tuple(indices)


def check_choice(name: str, value: _T, allowed: Collection[Any]) -> _T:
  """`value` if it is one of `allowed`; the message lists them.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_choice('optimizer.name', 'adamm', ('adam', 'sgd'))
    Traceback (most recent call last):
    ...
    ValueError: optimizer.name must be one of ['adam', 'sgd'], got 'adamm'.
  """
  if value not in allowed:
    raise ValueError(f'{name} must be one of {list(allowed)}, got {value!r}.')
  return value


def check_type(name: str, value: _T, types: type | tuple[type, ...],
               expected: str) -> _T:
  """`value` if it is an instance of `types`; `expected` describes them.

  Examples:
    >>> from tcm_jax import _checks
    >>> _checks.check_type('small_images', 'False', bool, 'True or False')
    Traceback (most recent call last):
    ...
    ValueError: small_images must be True or False, got 'False'.
  """
  if not isinstance(value, types):
    raise ValueError(f'{name} must be {expected}, got {value!r}.')
  return value


def check_rng(name: str, value: Any) -> np.random.Generator:
  """A `numpy.random.Generator` (the transforms' source of randomness).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _checks
    >>> rng = _checks.check_rng('rng', np.random.default_rng(0))
    >>> _checks.check_rng('rng', 0)
    Traceback (most recent call last):
    ...
    ValueError: rng must be a numpy.random.Generator, got 0.
  """
  return check_type(name, value, np.random.Generator,
                    'a numpy.random.Generator')
