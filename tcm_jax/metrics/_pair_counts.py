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
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import _array_checks
from tcm_jax import _checks
from tcm_jax.similarity import cosine_similarity

# The calibration range comes from a histogram of negative-pair distances
# over [0, 2] with bins 2**-14 wide: its quantiles are within 2**-15 (3.1e-5)
# of the exact ones, well inside 1e-4 (docs/definitions.md, the calibration range).
FINE_BINS_PER_UNIT = 2**14
FINE_BINS = 2 * FINE_BINS_PER_UNIT

# Elements in one block's [b, R] similarity: the block size adapts to R.
# On CPU 2**21 (8 MiB of float32; larger blocks ran slower); on accelerators
# (JAX's default backend) 2**26 (256 MiB), where small blocks leave the
# device waiting on dispatch: benchmarks/metrics.py on an H100 at N = 20,000
# took 1.61 s with 104 rows per block and 0.37 s with this default's 3,352.
# The peak memory is about 6 blocks (the similarities, bin keys, top-k sort):
# 1.55 GiB at N = 100,000 there.
DEFAULT_BLOCK_ELEMENTS = 2**21
ACCELERATOR_BLOCK_ELEMENTS = 2**26

ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class PairSource:
  """Where query blocks come from, with the labels as dense class ids.

  Exactly one of `similarity` (a `[Q, R]` matrix) or `embeddings` (queries,
  with `ref_embeddings` or the queries themselves as references) is set.
  """
  query_ids: np.ndarray  # [Q] int32 class id in [0, num_classes)
  ref_ids: np.ndarray  # [R] int32
  num_classes: int
  exclude_self: bool  # references are the queries: drop query i vs ref i
  classes: np.ndarray  # [num_classes] the label of each class id
  similarity: jax.Array | None = None
  embeddings: jax.Array | None = None
  ref_embeddings: jax.Array | None = None
  block_size: int | None = None

  @property
  def num_queries(self) -> int:
    return len(self.query_ids)

  @property
  def num_refs(self) -> int:
    return len(self.ref_ids)

  @property
  def rows_per_block(self) -> int:
    if self.block_size is not None:
      return min(self.block_size, self.num_queries)
    on_cpu = jax.default_backend() == 'cpu'
    elements = DEFAULT_BLOCK_ELEMENTS if on_cpu else ACCELERATOR_BLOCK_ELEMENTS
    rows = max(8, elements // max(self.num_refs, 1))
    return min(rows - rows % 8, self.num_queries)


@dataclasses.dataclass(frozen=True)
class Block:
  """One padded block of query rows, ready for a kernel."""
  queries: jax.Array  # [b, R] similarity rows, or [b, D] query embeddings
  refs: jax.Array | None  # [R, D] reference embeddings, None for rows of S
  query_ids: jax.Array  # [b]
  row_valid: jax.Array  # [b] False on padding rows
  offset: int  # index of the block's first query


def blocks(source: PairSource,
           progress: ProgressFn | None = None) -> Iterator[Block]:
  """The query blocks of `source`, the last one padded to full size.

  Args:
    source: where the blocks come from.
    progress: called as `progress(done, total)` after each block.

  Yields:
    `Block`s of `source.rows_per_block` query rows, in order.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> source = advanced.source_from_embeddings(
    ...     np.eye(3), [0, 0, 1], block_size=2)
    >>> [(b.offset, b.row_valid.tolist()) for b in advanced.blocks(source)]
    [(0, [True, True]), (2, [True, False])]
  """
  rows = source.rows_per_block
  queries = (source.similarity if source.similarity is not None
             else source.embeddings)
  refs = None
  if source.embeddings is not None:
    refs = (source.embeddings if source.ref_embeddings is None
            else source.ref_embeddings)
  num_blocks = -(-source.num_queries // rows)
  for index in range(num_blocks):
    start = index * rows
    stop = min(start + rows, source.num_queries)
    pad = rows - (stop - start)
    yield Block(
        queries=jnp.pad(queries[start:stop], ((0, pad), (0, 0))),
        refs=refs,
        query_ids=jnp.asarray(np.pad(source.query_ids[start:stop], (0, pad))),
        row_valid=jnp.asarray(np.arange(rows) < stop - start),
        offset=start,
    )
    if progress is not None:
      progress(index + 1, num_blocks)


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


def _host_labels(name: str, labels, length: int) -> np.ndarray:
  labels = np.asarray(labels)
  _array_checks.check_labels(name, labels, length, context=', one per row')
  return labels


def _source(labels, ref_labels, block_size, **arrays) -> PairSource:
  """Dense class ids for queries and references (union of their labels)."""
  block_size = _checks.check_optional_int('block_size', block_size)
  exclude_self = ref_labels is None
  ref_labels = labels if exclude_self else ref_labels
  classes, ids = np.unique(np.concatenate([labels, ref_labels]),
                           return_inverse=True)
  ids = ids.astype(np.int32)
  return PairSource(query_ids=ids[:len(labels)], ref_ids=ids[len(labels):],
                    num_classes=len(classes), exclude_self=exclude_self,
                    classes=classes, block_size=block_size, **arrays)


# Cosines stray beyond +-1 by rounding: a few units in float32, up to about
# 3e-3 from a bfloat16 matrix product (the TPU's default precision) or TF32.
# Far below what a dot product of unnormalised embeddings or 3 * S reaches.
COSINE_TOLERANCE = 1e-2


def _check_cosine_range(similarity: jax.Array) -> None:
  """Every entry a cosine, in [-1, 1] within `COSINE_TOLERANCE` (eager).

  Distances `1 - S` are clipped to [0, 2] by the histograms, so a matrix of
  dot products would be measured quietly and wrongly.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _pair_counts
    >>> _pair_counts._check_cosine_range(np.array([[1.0, 2.5], [2.5, 4.0]]))
    Traceback (most recent call last):
    ...
    ValueError: similarity must hold cosine similarities, in [-1, 1] (within 0.01); got values from 1 to 4 (3 of 4 beyond). A dot product of unnormalised embeddings is the usual mistake: pass tcm_jax.cosine_similarity(z), or the embeddings to metrics.evaluate_embeddings.
  """
  similarity = jnp.asarray(similarity)
  if not similarity.size:
    return
  beyond = jnp.abs(similarity) > 1.0 + COSINE_TOLERANCE
  count = int(jnp.sum(beyond))
  if count:
    low, high = float(jnp.min(similarity)), float(jnp.max(similarity))
    raise ValueError(
        'similarity must hold cosine similarities, in [-1, 1] (within '
        f'{COSINE_TOLERANCE:g}); got values from {low:.6g} to {high:.6g} '
        f'({count} of {similarity.size} beyond). A dot product of '
        'unnormalised embeddings is the usual mistake: pass '
        'tcm_jax.cosine_similarity(z), or the embeddings to '
        'metrics.evaluate_embeddings.')


def source_from_similarity(similarity, labels, ref_labels=None, *,
                           block_size: int | None = None) -> PairSource:
  """Validates a `[Q, R]` similarity matrix and its labels as a pair source.

  Args:
    similarity: `[Q, R]` cosine similarities, finite and in [-1, 1] (within
      `COSINE_TOLERANCE`, 0.01: the rounding of a bfloat16 or TF32 matrix
      product).
    labels: `[Q]` integer class ids of the queries.
    ref_labels: `[R]` class ids of the references; default: the queries
      (self pairs excluded).
    block_size: query rows per block (default: adapted to R).

  Returns:
    A `PairSource` of the matrix's rows.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> source = advanced.source_from_similarity(np.eye(3), [5, 5, 7])
    >>> source.query_ids, source.classes, source.exclude_self
    (array([0, 0, 1], dtype=int32), array([5, 7]), True)
  """
  similarity = jnp.asarray(similarity)
  _array_checks.check_similarity(similarity)
  num_queries, num_refs = similarity.shape
  labels = _host_labels('labels', labels, num_queries)
  if ref_labels is None:
    if num_queries != num_refs:
      raise ValueError(
          'similarity must be square when ref_labels is None (the queries are '
          f'their own references), got shape {similarity.shape}.')
  else:
    ref_labels = _host_labels('ref_labels', ref_labels, num_refs)
  _array_checks.check_finite_rows('similarity', similarity)
  _check_cosine_range(similarity)
  return _source(labels, ref_labels, block_size, similarity=similarity)


def source_from_embeddings(embeddings, labels, ref_embeddings=None,
                           ref_labels=None, *,
                           block_size: int | None = None) -> PairSource:
  """Validates embeddings (queries, and optional references) as a source.

  Args:
    embeddings: `[N, dim]` query embeddings, finite.
    labels: `[N]` integer class ids.
    ref_embeddings: optional `[M, dim]` references; default: the queries
      (self pairs excluded).
    ref_labels: `[M]` class ids of `ref_embeddings`.
    block_size: query rows per block (default: adapted to M).

  Returns:
    A `PairSource`: its blocks' similarities are computed on device.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> source = advanced.source_from_embeddings(np.eye(4), [0, 0, 1, 1])
    >>> source.num_queries, source.num_refs, source.num_classes
    (4, 4, 2)
  """
  embeddings = _array_checks.check_embeddings('embeddings', embeddings)
  labels = _host_labels('labels', labels, embeddings.shape[0])
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError('ref_embeddings and ref_labels must be given together.')
  _array_checks.check_finite_rows('embeddings', embeddings)
  if ref_embeddings is not None:
    dim = embeddings.shape[1]
    ref_embeddings = _array_checks.check_embeddings(
        'ref_embeddings', ref_embeddings, dim=dim, expected=f'2-D [m, {dim}]')
    ref_labels = _host_labels('ref_labels', ref_labels, ref_embeddings.shape[0])
    _array_checks.check_finite_rows('ref_embeddings', ref_embeddings)
  return _source(labels, ref_labels, block_size, embeddings=embeddings,
                 ref_embeddings=ref_embeddings)


def evaluated_classes(source: PairSource) -> np.ndarray:
  """`[classes]` mask of the classes with a positive and a negative pair.

  With the queries as references that is every class of at least 2 samples
  (when there is another class); otherwise a class needs a query and a
  reference of its own and a reference of another class.
  """
  queries = np.bincount(source.query_ids, minlength=source.num_classes)
  refs = np.bincount(source.ref_ids, minlength=source.num_classes)
  positives = queries * (refs - int(source.exclude_self))
  negatives = queries * (source.num_refs - refs)
  return (positives > 0) & (negatives > 0)


def _label_names(source: PairSource) -> str:
  return 'labels' if source.exclude_self else 'labels and ref_labels'


def check_has_positives(source: PairSource) -> None:
  """Raises unless some query has a positive (a reference of its class).

  Without one there is nothing to retrieve (Recall@K, MAP@R, R-precision
  would be 0/0) and no class has a utility curve.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _pair_counts
    >>> _pair_counts.check_has_positives(
    ...     _pair_counts.source_from_embeddings(np.eye(3), [4, 5, 6]))
    Traceback (most recent call last):
    ...
    ValueError: labels: no query has a positive (another sample of its class among the references): got 3 labels, all distinct (3 classes of one sample each); retrieval and utility curves need a class with two samples.
  """
  queries = np.bincount(source.query_ids, minlength=source.num_classes)
  refs = np.bincount(source.ref_ids, minlength=source.num_classes)
  if np.any((queries > 0) & (refs > int(source.exclude_self))):
    return
  if source.exclude_self:
    raise ValueError(
        'labels: no query has a positive (another sample of its class among '
        f'the references): got {source.num_queries} labels, all distinct '
        f'({source.num_classes} classes of one sample each); retrieval and '
        'utility curves need a class with two samples.')
  query_classes = source.classes[queries > 0]
  ref_classes = source.classes[refs > 0]
  raise ValueError(
      'labels and ref_labels: no query has a positive (a reference of its '
      f"class): the queries' {len(query_classes)} classes "
      f"{_first_few(query_classes)} and the references' {len(ref_classes)} "
      f'classes {_first_few(ref_classes)} share none.')


def _first_few(values: np.ndarray, count: int = 10) -> str:
  """`[a, b, ...]`: the first `count` values, for a message."""
  shown = ', '.join(str(v) for v in values[:count].tolist())
  return f'[{shown}{", ..." if len(values) > count else ""}]'


def check_enough_classes(source: PairSource) -> np.ndarray:
  """The evaluated-class mask; raises unless two classes can be compared."""
  check_has_positives(source)
  mask = evaluated_classes(source)
  if mask.sum() < 2:
    raise ValueError(
        f'{_label_names(source)}: need at least two classes with at least two '
        'samples (a positive and a negative pair each), got '
        f'{int(mask.sum())} among {source.num_classes} classes.')
  return mask
