"""Blockwise pair counting: the machinery every metric shares.

An evaluation set of N samples has N^2 pairs, far too many to hold at once
(iNaturalist-2018's test split: 1.85e10). Every metric here is therefore a
pass over query blocks: each block's `[b, R]` similarity is computed on device
(from embeddings, or sliced from a given matrix), reduced by a jit-compiled
kernel to small sums (histograms, per-class counts, per-query retrieval sums),
and accumulated on the host in int64/float64. Memory grows with `b * R` plus
`classes * thresholds`, never with `N^2`.

Distances are `d = 1 - S` in float32; a pair is accepted at threshold `t` when
`d <= t`. Counts at the thresholds are exact: each pair falls in the bin whose
edges are the thresholds themselves.

This module has the kernels and the counts; the sources they count and their
blocks (`tcm_jax.metrics._pair_sources`) are published here too.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# The sources and their blocks, published here with the counts.
from tcm_jax.metrics._pair_sources import ACCELERATOR_BLOCK_ELEMENTS
from tcm_jax.metrics._pair_sources import Block
from tcm_jax.metrics._pair_sources import blocks
from tcm_jax.metrics._pair_sources import check_enough_classes
from tcm_jax.metrics._pair_sources import check_has_positives
from tcm_jax.metrics._pair_sources import COSINE_TOLERANCE
from tcm_jax.metrics._pair_sources import DEFAULT_BLOCK_ELEMENTS
from tcm_jax.metrics._pair_sources import evaluated_classes
from tcm_jax.metrics._pair_sources import PairSource
from tcm_jax.metrics._pair_sources import ProgressFn
from tcm_jax.metrics._pair_sources import source_from_embeddings
from tcm_jax.metrics._pair_sources import source_from_similarity
from tcm_jax.similarity import cosine_similarity

# The calibration range comes from a histogram of negative-pair distances
# over [0, 2] with bins 2**-14 wide: its quantiles are within 2**-15 (3.1e-5)
# of the exact ones, well inside 1e-4 (docs/definitions.md, the calibration range).
FINE_BINS_PER_UNIT = 2**14
FINE_BINS = 2 * FINE_BINS_PER_UNIT


def block_similarity(queries: jax.Array, refs: jax.Array | None) -> jax.Array:
  """A block's `[b, R]` similarity: given rows, or cosine of embeddings
  (whatever their scale: `cosine_similarity` normalises rows of 1e20 too)."""
  if refs is None:
    return queries.astype(jnp.promote_types(queries.dtype, jnp.float32))
  return cosine_similarity(queries, refs, precision=jax.lax.Precision.HIGHEST)


def self_pair_mask(shape, offset) -> jax.Array:
  """True where query `i + offset` meets reference `i + offset`."""
  rows = jnp.arange(shape[0])[:, None] + offset
  return rows == jnp.arange(shape[1])[None, :]


def threshold_bins(distance: jax.Array, thresholds: jax.Array) -> jax.Array:
  """Number of thresholds strictly below each distance.

  A pair in bin `i` is accepted (`d <= t_k`) exactly at the thresholds
  `k >= i`. The thresholds are evenly spaced, so the bin is found by
  arithmetic and then settled against the thresholds themselves, which makes
  it exact at the edges.

  Args:
    distance: distances, any shape.
    thresholds: `[k]` increasing, evenly spaced thresholds, `k >= 2`.

  Returns:
    int32 bins in `[0, k]`, the shape of `distance`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.metrics._pair_counts import threshold_bins
    >>> t = jnp.linspace(0.2, 0.4, 3)  # 0.2, 0.3, 0.4
    >>> print(threshold_bins(jnp.array([0.1, 0.2, 0.25, t[1], 0.4, 0.5]), t))
    [0 0 1 1 2 3]
  """
  k = thresholds.shape[0]
  step = (thresholds[-1] - thresholds[0]) / (k - 1)
  guess = jnp.clip(jnp.ceil((distance - thresholds[0]) / step), 0, k)
  guess = guess.astype(jnp.int32)
  below = thresholds[jnp.clip(guess - 1, 0, k - 1)]
  guess = jnp.where((guess > 0) & (distance <= below), guess - 1, guess)
  above = thresholds[jnp.clip(guess, 0, k - 1)]
  return jnp.where((guess < k) & (distance > above), guess + 1, guess)


@functools.partial(jax.jit, static_argnames=('exclude_self',))
def negative_histogram_block(queries, refs, query_ids, ref_ids, row_valid,
                             offset, *, exclude_self):
  """Histogram of one block's negative-pair distances in the fine bins."""
  del exclude_self, offset  # a self pair is never negative
  distance = 1.0 - block_similarity(queries, refs)
  negative = (query_ids[:, None] != ref_ids[None, :]) & row_valid[:, None]
  bins = jnp.floor(jnp.clip(distance, 0.0, 2.0) * FINE_BINS_PER_UNIT)
  bins = jnp.minimum(bins.astype(jnp.int32), FINE_BINS - 1)
  bins = jnp.where(negative, bins, FINE_BINS)  # dropped below
  return jnp.zeros(FINE_BINS, jnp.int32).at[bins.ravel()].add(1, mode='drop')


@functools.partial(jax.jit, static_argnames=('num_classes', 'exclude_self'))
def class_histogram_block(queries, refs, query_ids, ref_ids, row_valid, offset,
                          thresholds, extra_threshold, *, num_classes,
                          exclude_self):
  """Per-class histograms of one block's pairs over the threshold bins.

  Returns:
    `[num_classes, 2, k + 1, 2]` int32 counts by query class, negative (0)
    or positive (1), `threshold_bins`, and not accepted (0) or accepted (1)
    at `extra_threshold`.
  """
  distance = 1.0 - block_similarity(queries, refs)
  positive = query_ids[:, None] == ref_ids[None, :]
  valid = row_valid[:, None] & jnp.ones(distance.shape, bool)
  if exclude_self:
    valid &= ~self_pair_mask(distance.shape, offset)
  # One scatter for both: key = (class, positive, threshold bin, d <= extra).
  num_bins = thresholds.shape[0] + 1
  key = ((query_ids[:, None] * 2 + positive) * num_bins
         + threshold_bins(distance, thresholds)) * 2
  key += distance <= extra_threshold
  size = num_classes * 2 * num_bins * 2
  key = jnp.where(valid, key, size)  # dropped below
  hist = jnp.zeros(size, jnp.int32).at[key.ravel()].add(1, mode='drop')
  return hist.reshape(num_classes, 2, num_bins, 2)


def negative_histogram(source: PairSource,
                       progress: ProgressFn | None = None) -> np.ndarray:
  """`[FINE_BINS]` int64 histogram of all negative-pair distances.

  The bins are `2**-14` wide over distances `d = 1 - S` in `[0, 2]`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> source = advanced.source_from_embeddings(np.eye(3), [0, 0, 1])
    >>> hist = advanced.negative_histogram(source)
    >>> int(hist.sum()), int(np.flatnonzero(hist)[0])  # 4 pairs at d = 1
    (4, 16384)
  """
  ref_ids = jnp.asarray(source.ref_ids)
  total = np.zeros(FINE_BINS, np.int64)
  for block in blocks(source, progress):
    total += np.asarray(negative_histogram_block(
        block.queries, block.refs, block.query_ids, ref_ids, block.row_valid,
        block.offset, exclude_self=source.exclude_self))
  return total


@dataclasses.dataclass(frozen=True)
class ClassCounts:
  """Exact per-class pair counts at each threshold (int64).

  Attributes:
    thresholds: `[k]` float32 distance thresholds.
    pos_accepted: `[classes, k]` positive pairs with `d <= t_k`, by class.
    neg_accepted: `[classes, k]` negative pairs with `d <= t_k`, by class.
    pos_total: `[classes]` positive pairs of each class.
    neg_total: `[classes]` negative pairs of each class.
    extra_threshold: one more threshold, counted on its own.
    pos_accepted_extra: `[classes]` positive pairs with `d <= extra`.
    neg_accepted_extra: `[classes]` negative pairs with `d <= extra`.
  """
  thresholds: np.ndarray
  pos_accepted: np.ndarray
  neg_accepted: np.ndarray
  pos_total: np.ndarray
  neg_total: np.ndarray
  extra_threshold: float
  pos_accepted_extra: np.ndarray
  neg_accepted_extra: np.ndarray


def class_counts(source: PairSource, thresholds: np.ndarray,
                 extra_threshold: float,
                 progress: ProgressFn | None = None) -> ClassCounts:
  """Counts every pair of `source` by query class against the thresholds.

  Args:
    source: the pairs.
    thresholds: `[k]` increasing, evenly spaced distance thresholds (e.g.
      from `thresholds_between`).
    extra_threshold: one more threshold, counted on its own.
    progress: called as `progress(done, total)` after each block.

  Returns:
    `ClassCounts`, rows indexed by the source's dense class ids.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> source = advanced.source_from_embeddings(
    ...     [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], [0, 0, 1])
    >>> counts = advanced.class_counts(
    ...     source, advanced.thresholds_between(0.1, 0.4, 3), 1.0)
    >>> print(counts.pos_accepted[0])  # class 0's two pairs, at d = 0.2
    [0 2 2]
  """
  thresholds = np.asarray(thresholds, np.float32)
  ref_ids = jnp.asarray(source.ref_ids)
  hist = np.zeros((source.num_classes, 2, len(thresholds) + 1, 2), np.int64)
  for block in blocks(source, progress):
    hist += np.asarray(class_histogram_block(
        block.queries, block.refs, block.query_ids, ref_ids, block.row_valid,
        block.offset, jnp.asarray(thresholds), jnp.float32(extra_threshold),
        num_classes=source.num_classes, exclude_self=source.exclude_self))
  at_extra = hist[..., 1].sum(axis=2)
  hist = hist.sum(axis=3)
  accepted = np.cumsum(hist, axis=2)[:, :, :-1]
  totals = hist.sum(axis=2)
  return ClassCounts(
      thresholds=thresholds,
      pos_accepted=accepted[:, 1], neg_accepted=accepted[:, 0],
      pos_total=totals[:, 1], neg_total=totals[:, 0],
      extra_threshold=float(extra_threshold),
      pos_accepted_extra=at_extra[:, 1], neg_accepted_extra=at_extra[:, 0])
