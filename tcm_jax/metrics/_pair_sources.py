"""Pair sources: validated inputs to the metrics, and their query blocks.

A source holds a `[Q, R]` similarity matrix, or embeddings whose block
similarities `tcm_jax.metrics._pair_counts` computes on device, with the
labels as dense class ids; `blocks` cuts it into padded query blocks, as
large as memory allows (`PairSource.rows_per_block`). The checks here
(finite rows, cosines in range, classes that can be compared) run once, on
the whole input, before any block is counted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import _array_checks
from tcm_jax import _checks

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
    >>> from tcm_jax.metrics import _pair_sources
    >>> _pair_sources._check_cosine_range(np.array([[1.0, 2.5], [2.5, 4.0]]))
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
        'ref_embeddings', ref_embeddings, dim=dim,
        expected=f'2-D [m, {dim}]')
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
    >>> from tcm_jax.metrics import _pair_sources
    >>> _pair_sources.check_has_positives(
    ...     _pair_sources.source_from_embeddings(np.eye(3), [4, 5, 6]))
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
