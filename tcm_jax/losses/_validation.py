"""Trace-time argument checks shared by the losses and metrics.

Every check runs on shapes, dtypes and Python scalars only, so it costs nothing
inside `jax.jit` and fails before any computation with a message that names the
argument and what was received.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def check_similarity(similarity: jax.Array) -> None:
  """A (Q, R) floating-point matrix."""
  if similarity.ndim != 2:
    raise ValueError(
        'similarity must be a 2-D (queries, references) matrix, got shape '
        f'{similarity.shape}.')
  if not jnp.issubdtype(similarity.dtype, jnp.floating):
    raise TypeError(
        f'similarity must have a floating dtype, got {similarity.dtype}.')


def as_labels(name: str, labels, length: int, axis_name: str) -> jax.Array:
  """1-D integer labels, one per row (or column) of the similarity.

  Host arrays wider than JAX's integer type (int64 while `jax_enable_x64` is
  off) are checked to fit first, so that distinct ids are never wrapped into
  equal ones.
  """
  if not isinstance(labels, jax.Array):
    host = np.asarray(labels)
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
  if labels.ndim != 1 or labels.shape[0] != length:
    raise ValueError(
        f'{name} must have shape ({length},) to match the {axis_name} of '
        f'similarity, got shape {labels.shape}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f'{name} must have an integer dtype (class ids), got {labels.dtype}.')
  return labels


def common_label_dtype(labels: jax.Array, ref_labels: jax.Array):
  """The integer dtype both label arrays convert to without wrapping."""
  dtype = jax.dtypes.canonicalize_dtype(
      jnp.promote_types(labels.dtype, ref_labels.dtype))
  if not (np.can_cast(labels.dtype, dtype, 'safe')
          and np.can_cast(ref_labels.dtype, dtype, 'safe')):
    raise TypeError(
        f'labels ({labels.dtype}) and ref_labels ({ref_labels.dtype}) have no '
        'common integer dtype that holds both; cast them to one dtype.')
  return dtype


def check_mask(name: str, mask: jax.Array | None, length: int) -> None:
  """An optional boolean padding mask of the given length."""
  if mask is None:
    return
  if mask.ndim != 1 or mask.shape[0] != length:
    raise ValueError(
        f'{name} must have shape ({length},), got shape {mask.shape}.')
  if mask.dtype != jnp.bool_:
    raise TypeError(f'{name} must be a boolean mask, got dtype {mask.dtype}.')


def concrete_float(name: str, value) -> float | None:
  """`value` as a Python float, or None when it is only known at run time."""
  if isinstance(value, (str, bytes)):
    raise TypeError(f'{name} must be a number, got {type(value).__name__} '
                    f'{value!r}.')
  try:
    return float(value)
  except jax.errors.ConcretizationTypeError:
    return None
  except TypeError as e:
    raise TypeError(
        f'{name} must be a scalar, got {type(value).__name__} '
        f'{np.shape(value)}.') from e


def check_in_range(name: str, value, low: float, high: float) -> None:
  """A finite scalar in [low, high]; traced values are not checked."""
  x = concrete_float(name, value)
  if x is None:
    return
  if not math.isfinite(x) or not low <= x <= high:
    raise ValueError(
        f'{name} must be a finite number in [{low}, {high}], got {value!r}.')
