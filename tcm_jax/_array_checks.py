"""Argument checks of arrays: similarities, embeddings, labels and masks.

The array half of the argument checks (`tcm_jax._checks` has the scalar
half), with its message form: a failed check says what the argument is
called, what it must be and what it was. A check that converts returns a JAX
array, so that a public function validates and converts in one line.

Checks of shapes and dtypes run at trace time: inside `jax.jit` they cost
nothing and fail before any computation. `check_finite_rows` alone reads the
values, and so runs eagerly.

This module imports only jax and numpy, so that the losses and metrics that
use it stay light.

Examples:
  >>> import numpy as np
  >>> from tcm_jax import _array_checks
  >>> _array_checks.check_embeddings('x', np.zeros((3, 4))).shape
  (3, 4)
  >>> _array_checks.check_embeddings('x', np.zeros(3))
  Traceback (most recent call last):
  ...
  ValueError: x must be 2-D [n, dim], got shape (3,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_similarity(similarity: jax.Array | np.ndarray) -> None:
  """A `[Q, R]` floating-point similarity matrix.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _array_checks
    >>> _array_checks.check_similarity(np.zeros(4))
    Traceback (most recent call last):
    ...
    ValueError: similarity must be a 2-D (queries, references) matrix, got shape (4,).
  """
  if similarity.ndim != 2:
    raise ValueError(
        'similarity must be a 2-D (queries, references) matrix, got shape '
        f'{similarity.shape}.')
  if not jnp.issubdtype(similarity.dtype, jnp.floating):
    raise TypeError(
        f'similarity must have a floating dtype, got {similarity.dtype}.')


def _held_rows(embeddings):
  """`embeddings`, each host row JAX's dtype for it cannot hold scaled into
  range by a power of two; JAX arrays (already held) as they are.

  Without `jax_enable_x64` JAX holds float64 as float32, in which a row of
  1e200 would be infinite and one of 1e-200 zero. Scaled so that its largest
  magnitude is in [0.5, 1) (as `tcm_jax.similarity.l2_normalize` scales rows
  on device) a row keeps its direction, all that its cosines depend on. Rows
  already in range are left bit for bit, and so are zero rows and rows with
  NaN or an infinity (for `check_finite_rows` to name).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _array_checks
    >>> rows = np.array([[3.0, -4.0], [3.0, 4.0], [0.0, 0.0]])
    >>> rows[0] *= 2.0**700  # 2e211: beyond float32
    >>> print(_array_checks._held_rows(rows))  # row 0 times 2**-703
    [[ 0.375 -0.5  ]
     [ 3.     4.   ]
     [ 0.     0.   ]]
  """
  if isinstance(embeddings, jax.Array):
    return embeddings
  host = np.asarray(embeddings)
  if host.ndim != 2 or not np.issubdtype(host.dtype, np.floating):
    return host
  held = np.finfo(jax.dtypes.canonicalize_dtype(host.dtype))
  if held.maxexp >= np.finfo(host.dtype).maxexp:
    return host  # (JAX holds this dtype, or a wider one)
  # The largest magnitude of each row, without a copy of the array.
  peak = np.maximum(np.max(host, axis=1, initial=0.0),
                    -np.min(host, axis=1, initial=0.0))
  _, exponent = np.frexp(peak)  # peak in [2**(exponent - 1), 2**exponent)
  outside = np.isfinite(peak) & (peak > 0) & (
      (exponent >= held.maxexp) | (exponent <= held.minexp))
  if not outside.any():
    return host
  scaled = host.copy()
  scaled[outside] = np.ldexp(host[outside], -exponent[outside, None])
  return scaled


def check_embeddings(name: str, embeddings: jax.typing.ArrayLike, *,
                     dim: int | None = None,
                     expected: str | None = None) -> jax.Array:
  """`embeddings` as a `[n, dim]` JAX array.

  Args:
    name: the argument's name.
    embeddings: the argument.
    dim: the number of columns it must have; any when None.
    expected: what the message says it must be (default: `'2-D [n, dim]'`).

  Returns:
    The embeddings as a JAX array; host rows beyond what JAX's dtype for
    them holds (float64 without `jax_enable_x64`) scaled by a power of two
    (`_held_rows`), so that their direction, all a cosine needs, survives.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _array_checks
    >>> _array_checks.check_embeddings('ref_embeddings', np.zeros((3, 5)),
    ...                                dim=4, expected='2-D [m, 4]')
    Traceback (most recent call last):
    ...
    ValueError: ref_embeddings must be 2-D [m, 4], got shape (3, 5).
  """
  embeddings = jnp.asarray(_held_rows(embeddings))
  if expected is None:
    expected = f'2-D [n, {"dim" if dim is None else dim}]'
  if embeddings.ndim != 2 or (dim is not None and embeddings.shape[1] != dim):
    raise ValueError(
        f'{name} must be {expected}, got shape {embeddings.shape}.')
  return embeddings


def check_labels(name: str, labels: jax.Array | np.ndarray, length: int, *,
                 context: str = '') -> None:
  """1-D integer class ids, `length` of them.

  Args:
    name: the argument's name.
    labels: a JAX or NumPy array.
    length: the number of labels expected.
    context: what the length comes from, in the message (e.g. `' to match
      the rows of similarity'`).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _array_checks
    >>> _array_checks.check_labels('labels', np.zeros(3, int), 4,
    ...                            context=', one per row')
    Traceback (most recent call last):
    ...
    ValueError: labels must have shape (4,), one per row, got shape (3,).
  """
  if labels.ndim != 1 or labels.shape[0] != length:
    raise ValueError(
        f'{name} must have shape ({length},){context}, got shape '
        f'{labels.shape}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f'{name} must have an integer dtype (class ids), got {labels.dtype}.')


def as_labels(name: str, labels: jax.typing.ArrayLike, length: int,
              axis_name: str) -> jax.Array:
  """Labels of the rows (or columns) of a similarity, as a JAX array.

  Host arrays wider than JAX's integer type (int64 while `jax_enable_x64` is
  off) are checked to fit first, so that distinct ids are never wrapped into
  equal ones.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _array_checks
    >>> _array_checks.as_labels('labels', np.arange(3), 4, 'rows')
    Traceback (most recent call last):
    ...
    ValueError: labels must have shape (4,) to match the rows of similarity, got shape (3,).
  """
  if not isinstance(labels, jax.Array):
    host = _host_numbers(name, labels, f'an integer array of shape '
                         f'({length},) (class ids)')
    if np.issubdtype(host.dtype, np.integer) and host.size:
      canonical = jax.dtypes.canonicalize_dtype(host.dtype)
      info = np.iinfo(canonical)
      low, high = host.min(), host.max()
      if low < info.min or high > info.max:
        raise ValueError(
            f'{name} holds class ids in [{low}, {high}], beyond {canonical} '
            f'(JAX\'s integer type here); remap the ids or enable '
            f'jax_enable_x64.')
  labels = jnp.asarray(labels)
  check_labels(name, labels, length,
               context=f' to match the {axis_name} of similarity')
  return labels


def _host_numbers(name: str, value, expected: str) -> np.ndarray:
  """`value` as a NumPy array of numbers (bools included), else a TypeError
  naming `name`: None, strings, ragged lists and objects are refused here,
  before JAX's own conversion error, which names no argument.

  Examples:
    >>> from tcm_jax import _array_checks
    >>> _array_checks._host_numbers('labels', None, 'class ids')
    Traceback (most recent call last):
    ...
    TypeError: labels must be class ids, got None.
  """
  if value is None:
    raise TypeError(f'{name} must be {expected}, got None.')
  try:
    host = np.asarray(value)
  except (ValueError, TypeError):  # ragged nested sequences
    host = None
  if host is None or host.dtype.kind not in 'biufc':
    if isinstance(value, np.ndarray):
      received = f'array of dtype {value.dtype} and shape {value.shape}'
    else:
      received = f'{type(value).__name__} {value!r}'
      if len(received) > 80:
        received = received[:77] + '...'
    raise TypeError(f'{name} must be {expected}, got {received}.')
  return host


def host_labels(name: str, labels, length: int, *,
                context: str = '') -> np.ndarray:
  """Labels as a NumPy array, checked as `check_labels` does, after a clear
  `TypeError` for None, strings and other values that are no numbers.

  Examples:
    >>> from tcm_jax import _array_checks
    >>> _array_checks.host_labels('labels', ['a', 'b'], 2)
    Traceback (most recent call last):
    ...
    TypeError: labels must be an integer array of shape (2,) (class ids), got list ['a', 'b'].
  """
  host = _host_numbers(name, labels,
                       f'an integer array of shape ({length},) (class ids)')
  check_labels(name, host, length, context=context)
  return host


def common_label_dtype(labels: jax.Array, ref_labels: jax.Array) -> np.dtype:
  """The integer dtype both label arrays convert to without wrapping.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import _array_checks
    >>> _array_checks.common_label_dtype(jnp.zeros(2, jnp.int8),
    ...                                  jnp.zeros(2, jnp.int32))
    dtype('int32')
  """
  dtype = jax.dtypes.canonicalize_dtype(
      jnp.promote_types(labels.dtype, ref_labels.dtype))
  if not (np.can_cast(labels.dtype, dtype, 'safe')
          and np.can_cast(ref_labels.dtype, dtype, 'safe')):
    raise TypeError(
        f'labels ({labels.dtype}) and ref_labels ({ref_labels.dtype}) have no '
        'common integer dtype that holds both; cast them to one dtype.')
  return dtype


def check_mask(name: str, mask: jax.Array | None, length: int) -> None:
  """An optional boolean padding mask of the given length.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import _array_checks
    >>> _array_checks.check_mask('where', jnp.ones(3), 3)
    Traceback (most recent call last):
    ...
    TypeError: where must be a boolean mask, got dtype float32.
  """
  if mask is None:
    return
  if mask.ndim != 1 or mask.shape[0] != length:
    raise ValueError(
        f'{name} must have shape ({length},), got shape {mask.shape}.')
  if mask.dtype != jnp.bool_:
    raise TypeError(f'{name} must be a boolean mask, got dtype {mask.dtype}.')


def check_finite_rows(name: str, array: jax.typing.ArrayLike) -> None:
  """Every row of a 2-D array finite (an eager check: it reads the values).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import _array_checks
    >>> _array_checks.check_finite_rows('embeddings',
    ...                                 [[0.0, 1.0], [np.nan, 0.0]])
    Traceback (most recent call last):
    ...
    ValueError: embeddings has 1 rows with NaN or infinite values (rows [1]).
  """
  finite = np.asarray(jnp.all(jnp.isfinite(jnp.asarray(array)), axis=1))
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise ValueError(
        f'{name} has {len(bad)} rows with NaN or infinite values (rows '
        f'{bad[:10].tolist()}{" ..." if len(bad) > 10 else ""}).')
