"""TCM's margins from data: quantiles of the pair similarities.

`margins_from_similarity` picks the two margins of `tcm_loss` as quantiles of
the positive and negative pair similarities that make given fractions of the
pairs hard (e.g. of a trained model's validation embeddings).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import _array_checks
from tcm_jax import _checks
from tcm_jax.losses import _pairs


class TCMMargins(NamedTuple):
  """TCM's two similarity margins, as `margins_from_similarity` returns them.

  Attributes:
    margin_pos: positive pairs with similarity `<= margin_pos` are hard.
    margin_neg: negative pairs with similarity `>= margin_neg` are hard.
  """
  margin_pos: float
  margin_neg: float


# `margins_from_similarity` selects order statistics by radix selection: the
# similarities become integer keys that sort as they do, read 16 bits at a
# time, one histogram pass (a scatter-add) per 16 bits. A sort of a 4096 x 4096
# matrix takes seconds on XLA:CPU, two passes a fraction of one.
_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
# Rows of a pass's histogram: positive pairs, negative pairs, the rest.
_POS, _NEG, _NONE = 0, 1, 2
_FRACTION = 'a number strictly between 0 and 1'


def _order_keys(x: jax.Array) -> jax.Array:
  """Unsigned keys that sort as the float32/float64 `x` does (infs included).

  The IEEE bit pattern with all bits flipped for negative numbers and the sign
  bit set for the others; -0.0 comes just before +0.0.
  """
  utype = jnp.uint32 if x.dtype == jnp.float32 else jnp.uint64
  bits = jax.lax.bitcast_convert_type(x, utype)
  sign = jnp.array(1 << (jnp.iinfo(utype).bits - 1), utype)
  return jnp.where(bits >= sign, ~bits, bits | sign)


def _float_of_key(key: int, dtype) -> float:
  """Inverse of `_order_keys` for one key, on the host."""
  dtype = np.dtype(dtype)
  nbits = 8 * dtype.itemsize
  sign = 1 << (nbits - 1)
  bits = key ^ sign if key & sign else key ^ ((1 << nbits) - 1)
  return float(np.array(bits, f'uint{nbits}').view(dtype))


def _keys_and_kinds(similarity, labels, ref_labels, where, ref_where,
                    exclude_self):
  """`[q, r]` order keys and kinds (`_POS`, `_NEG`, `_NONE`) of the entries.

  `_pairs.prepare` decides which pairs take part, as in `tcm_statistics`.
  """
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self)
  kind = (_NONE - (_NONE - _POS) * masks.positive
          - (_NONE - _NEG) * masks.negative).astype(jnp.int32)
  return similarity, _order_keys(similarity), kind


@functools.partial(jax.jit, static_argnames=('exclude_self',))
def _radix_pass(similarity, labels, ref_labels, where, ref_where, prefixes,
                shift, *, exclude_self: bool):
  """One histogram pass of `margins_from_similarity`'s radix selection.

  Args:
    similarity, labels, ref_labels, where, ref_where, exclude_self: as
      `tcm_statistics` takes them.
    prefixes: `[2]` keys: the bits above this pass's digit that the positive
      and the negative pairs counted must have (none in the first pass).
    shift: the lowest bit of this pass's 16-bit digit of the keys (traced, so
      that all passes share one compilation).

  Returns:
    `(histograms, num_nonfinite)`: `[2, _BINS]` int32 counts of the digit
    values of the positive and the negative pairs counted, and the number of
    non-finite similarities among the pairs taking part.
  """
  similarity, keys, kind = _keys_and_kinds(
      similarity, labels, ref_labels, where, ref_where, exclude_self)
  prefixes = jnp.asarray(prefixes, keys.dtype)
  shift = jnp.asarray(shift, keys.dtype)
  # Two shifts: the first pass shifts by the key's whole width, which a single
  # shift would not define.
  high = (keys >> (shift + _DIGIT_BITS - 1)) >> 1
  prefix = jnp.where(kind == _POS, prefixes[_POS], prefixes[_NEG])
  counted = jnp.where(high == prefix, kind, _NONE)
  digit = ((keys >> shift) & (_BINS - 1)).astype(jnp.int32)
  histograms = jnp.zeros(3 * _BINS, jnp.int32).at[
      (counted * _BINS + digit).ravel()].add(1)
  num_nonfinite = jnp.sum(
      ((kind != _NONE) & ~jnp.isfinite(similarity)).astype(jnp.int32))
  return histograms[:2 * _BINS].reshape(2, _BINS), num_nonfinite


@functools.partial(jax.jit, static_argnames=('exclude_self',))
def _smallest_keys_above(similarity, labels, ref_labels, where, ref_where,
                         bounds, *, exclude_self: bool):
  """`[2]`: per kind (positive, negative) the smallest key above `bounds`."""
  _, keys, kind = _keys_and_kinds(
      similarity, labels, ref_labels, where, ref_where, exclude_self)
  bounds = jnp.asarray(bounds, keys.dtype)
  max_key = jnp.array(jnp.iinfo(keys.dtype).max, keys.dtype)
  return jnp.stack([
      jnp.min(jnp.where((kind == k) & (keys > bounds[k]), keys, max_key))
      for k in (_POS, _NEG)])


def _virtual_index(n: int, quantile: float) -> tuple[int, int, float]:
  """NumPy's 'linear' quantile: ranks below and above, and the weight."""
  index = (n - 1) * quantile
  below = min(math.floor(index), n - 1)
  return below, min(below + 1, n - 1), index - below


def _lerp(a: float, b: float, t: float) -> float:
  """NumPy's `_lerp`: exact at `t` = 0 and 1 and when `a == b`."""
  diff = b - a
  return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def margins_from_similarity(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    hard_pos_fraction: float = 0.2,
    hard_neg_fraction: float = 0.01,
    exclude_self: bool | None = None,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
) -> TCMMargins:
  """TCM margins that make given fractions of a matrix's pairs hard.

  `margin_pos` is the `hard_pos_fraction`-quantile of the similarities of the
  positive pairs: a similarity threshold there would falsely reject about that
  fraction of them. `margin_neg` is the `(1 - hard_neg_fraction)`-quantile of
  the negative pairs' similarities: a threshold there would falsely accept
  about `hard_neg_fraction` of them. E.g. margins from the similarities of a
  trained model's validation embeddings.

  The pairs are those `tcm_statistics` counts, with the same arguments: every
  `(query, reference)` entry of the matrix that is not a self pair (when
  `exclude_self`) nor masked out, so a symmetric matrix counts `(i, j)` and
  `(j, i)` both. Masked-out entries and self pairs may hold anything (NaN).

  Quantiles interpolate linearly, as NumPy's default `np.quantile`
  (`method='linear'`): of `n` pair similarities sorted as `x[0] <= ... <=
  x[n - 1]`, the `p`-quantile with `h = (n - 1) * p` is `x[floor(h)] + (h -
  floor(h)) * (x[floor(h) + 1] - x[floor(h)])`. The order statistics are
  exact and the interpolation is NumPy's, in float64: the margins equal
  `np.quantile` of the pair similarities as float64 arrays, bit for bit (then
  clipped). Hence, with `h = (n - 1) * hard_pos_fraction` over the `n`
  positive pairs, at least `floor(h) + 1` have `S <= margin_pos` and at most
  `ceil(h)` have `S < margin_pos`; with `h = (n - 1) * (1 -
  hard_neg_fraction)` over the `n` negative pairs, at least `n - ceil(h)` have
  `S >= margin_neg` and at most `n - 1 - floor(h)` have `S > margin_neg`.
  Both hold whatever the ties, also once a margin is rounded to the
  similarity's dtype as `tcm_statistics` does. So when no similarity equals
  the margin, the hard fraction `F` is within `1 / n` of its target `f`
  (`f - f / n <= F <= f + (1 - f) / n`). Ties at the margin make it larger:
  with all similarities equal, every pair is hard. The margins are clipped to
  [-1, 1], TCM's range, which only changes them (and then the fractions) when
  similarities lie outside it.

  Not differentiable and not for use under `jax.jit`: the result is Python
  floats, from a jitted radix selection over the matrix (two histogram passes
  for float32 and narrower similarities, four for float64, and one pass more
  when an interpolation's two order statistics differ in their leading bits;
  about 0.3 s for 4096 x 4096 float32 on two CPU cores, no sort).

  Args:
    similarity: `[q, r]` cosine similarities, a concrete array of any float
      dtype (fewer than 2**31 entries).
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; defaults to `labels` (the
      queries are their own references and self pairs are excluded).
    hard_pos_fraction: target fraction of hard positive pairs, in (0, 1).
    hard_neg_fraction: target fraction of hard negative pairs, in (0, 1).
    exclude_self: drop query `i` against reference `i`; defaults to
      `ref_labels is None`.
    where: optional `[q]` boolean mask, False for padded queries.
    ref_where: optional `[r]` boolean mask, False for padded references
      (must be None when `ref_labels` is None; `where` then masks both).

  Returns:
    `TCMMargins(margin_pos, margin_neg)` of Python floats in [-1, 1].

  Raises:
    ValueError: a fraction not strictly between 0 and 1; no positive or no
      negative pair taking part; a non-finite similarity among the pairs that
      take part; bad shapes (as `tcm_statistics`).
    TypeError: traced arguments, non-integer labels, non-boolean masks,
      non-float similarity.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> s = jnp.array([[1.0, 0.8, 0.6, 0.1],
    ...                [0.8, 1.0, 0.2, 0.3],
    ...                [0.6, 0.2, 1.0, 0.7],
    ...                [0.1, 0.3, 0.7, 1.0]])
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> # Positives: 0.8, 0.8, 0.7, 0.7; negatives: 0.6, 0.1, 0.2, 0.3 (twice).
    >>> m = losses.margins_from_similarity(
    ...     s, labels, hard_pos_fraction=0.5, hard_neg_fraction=0.25)
    >>> print(f'{m.margin_pos:.3f} {m.margin_neg:.3f}')
    0.750 0.375

    The hard fractions that the margins give, as the trainer logs them:

    >>> from tcm_jax.losses import advanced
    >>> stats = advanced.tcm_statistics(s, labels, margin_pos=m.margin_pos,
    ...                                 margin_neg=m.margin_neg)
    >>> d = advanced.tcm_diagnostics(stats)
    >>> print(f"{d['hard_pos_fraction']:.2f} {d['hard_neg_fraction']:.2f}")
    0.50 0.25
  """
  pos_quantile = _checks.check_fraction(
      'hard_pos_fraction', hard_pos_fraction, expected=_FRACTION)
  neg_quantile = 1.0 - _checks.check_fraction(
      'hard_neg_fraction', hard_neg_fraction, expected=_FRACTION)
  arrays = dict(similarity=similarity, labels=labels, ref_labels=ref_labels,
                where=where, ref_where=ref_where)
  for name, x in arrays.items():
    if isinstance(x, jax.core.Tracer):
      raise TypeError(
          'margins_from_similarity computes Python floats from concrete '
          f'arrays; call it outside jax.jit and transformations (got a traced '
          f'{name}).')
  similarity = jnp.asarray(similarity)
  _array_checks.check_similarity(similarity)
  similarity = similarity.astype(
      jnp.promote_types(similarity.dtype, jnp.float32))
  if similarity.size >= 2**31:
    raise ValueError(
        'similarity must have fewer than 2**31 entries (int32 pair counts), '
        f'got shape {similarity.shape}.')
  num_queries, num_refs = similarity.shape
  # Host labels are checked here, outside jit, where `as_labels` still sees
  # whether their ids fit JAX's integer type.
  labels = _array_checks.as_labels('labels', labels, num_queries, 'rows')
  if ref_labels is not None:
    ref_labels = _array_checks.as_labels('ref_labels', ref_labels, num_refs,
                                             'columns')
  where = None if where is None else jnp.asarray(where)
  ref_where = None if ref_where is None else jnp.asarray(ref_where)
  exclude_self = ref_labels is None if exclude_self is None else bool(
      exclude_self)
  nbits = jnp.finfo(similarity.dtype).bits
  key_dtype = np.dtype(f'uint{nbits}')
  dtype = similarity.dtype
  args = (similarity, labels, ref_labels, where, ref_where)
  prefixes = np.zeros(2, key_dtype)  # the key bits found so far, per kind
  for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
    histograms, num_nonfinite = jax.device_get(_radix_pass(
        *args, prefixes, shift, exclude_self=exclude_self))
    counts = np.cumsum(histograms, axis=1, dtype=np.int64)
    if shift == nbits - _DIGIT_BITS:
      num_pos, num_neg = int(counts[_POS, -1]), int(counts[_NEG, -1])
      _check_pairs(num_pos, num_neg, int(num_nonfinite), similarity.shape)
      below_pos, above_pos, weight_pos = _virtual_index(num_pos, pos_quantile)
      below_neg, above_neg, weight_neg = _virtual_index(num_neg, neg_quantile)
      # The ranks of the lower order statistics among the keys that share
      # the bits found so far.
      ranks = np.array([below_pos, below_neg], np.int64)
    digits = np.array([np.searchsorted(counts[k], ranks[k], side='right')
                       for k in (_POS, _NEG)])
    ranks -= np.where(digits > 0, counts[[_POS, _NEG], digits - 1], 0)
    prefixes = ((prefixes << key_dtype.type(_DIGIT_BITS))
                | digits.astype(key_dtype))
  # `prefixes` are now the whole keys of the lower order statistics, `ranks`
  # their ranks among the pairs of equal key.

  def upper_key(k, below, above):
    """The key of rank `above` (`below` or `below + 1`)."""
    num_at_most = below - ranks[k] + histograms[k, digits[k]]  # S <= lower
    if above < num_at_most:
      return int(prefixes[k])
    later = np.flatnonzero(histograms[k, digits[k] + 1:])
    if later.size:  # the same bits above the last digit
      return int(prefixes[k]) + 1 + int(later[0])
    return None  # beyond the last histogram

  upper = [upper_key(_POS, below_pos, above_pos),
           upper_key(_NEG, below_neg, above_neg)]
  if None in upper:
    above_prefixes = jax.device_get(_smallest_keys_above(
        *args, prefixes, exclude_self=exclude_self))
    upper = [int(a) if u is None else u for u, a in zip(upper, above_prefixes)]
  value = lambda key: _float_of_key(key, dtype)
  margin = lambda k, weight: min(max(
      _lerp(value(int(prefixes[k])), value(upper[k]), weight), -1.0), 1.0)
  return TCMMargins(margin_pos=margin(_POS, weight_pos),
                    margin_neg=margin(_NEG, weight_neg))


def _check_pairs(num_pos: int, num_neg: int, num_nonfinite: int,
                 shape) -> None:
  """The pairs that take part can give both margins."""
  for kind, count, label_rule in (('positive', num_pos, 'the same class'),
                                  ('negative', num_neg, 'different classes')):
    if count == 0:
      raise ValueError(
          f'margins_from_similarity needs at least one {kind} pair (query and '
          f'reference of {label_rule}, not a self pair, not masked out); '
          f'labels, ref_labels, where and ref_where give none among the '
          f'{shape[0]} x {shape[1]} entries of similarity.')
  if num_nonfinite:
    raise ValueError(
        f'similarity must be finite at the pairs that take part, got '
        f'{num_nonfinite} non-finite value(s) among its {num_pos + num_neg} '
        'positive and negative pairs (mask them out with where / ref_where).')
