"""Retrieval accuracy: Recall@K, MAP@R and R-precision, leave-one-out.

Each query is ranked against every reference (itself excluded when the
references are the queries) by cosine similarity, ties broken by reference
index, lowest first. A query whose class has no other reference is left out
and counted.

- Recall@K: fraction of queries with a same-class reference among their K
  nearest neighbours (the metric-learning meaning).
- MAP@R: for a query with R same-class references, the mean over ranks
  1..R of precision@i counted only at ranks holding a same-class reference.
- R-precision: fraction of same-class references among the first R.

References:
  Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _pair_counts


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
  """Retrieval accuracy over the queries that have a same-class reference.

  The scalar metrics are means over the evaluated queries. `class_sums`
  holds the same per-query sums split by the query's class, so that per-class
  results (`per_class`) and resamples of the classes (`metrics.class_bootstrap`)
  are ratios of its column sums: summed over all its rows they give the
  scalar metrics (exactly for Recall@K and the counts; MAP@R and R-precision
  within float32 rounding, about 1e-7, as the blocks' sums are grouped
  differently).

  Attributes:
    recall_at_k: `{K: Recall@K}`, K increasing.
    map_at_r: MAP@R.
    r_precision: R-precision.
    num_queries: queries evaluated.
    num_excluded_queries: queries left out: no other reference of their class.
    classes: `[C]` labels of the classes with at least one query evaluated,
      increasing.
    class_sums: `[C, len(ks) + 3]` float64 sums over each class's evaluated
      queries: hits at each K of `ks` (a hit: a same-class reference among
      the K nearest), then AP@R, then R-precision, then the number of
      queries evaluated.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4, 0.3, 0.2], [0.9, 1.0, 0.2, 0.1, 0.6],
    ...               [0.4, 0.2, 1.0, 0.3, 0.1], [0.3, 0.1, 0.3, 1.0, 0.5],
    ...               [0.2, 0.6, 0.1, 0.5, 1.0]])
    >>> r = metrics.evaluate_similarity(s, [0, 0, 1, 1, 2], ks=(1, 2),
    ...                                 distance_range=(0.2, 0.6)).retrieval
    >>> r.classes, r.ks  # class 2 has no other sample: left out
    (array([0, 1]), (1, 2))
    >>> r.class_sums  # R@1 hits, R@2 hits, AP@R, R-precision, queries
    array([[2., 2., 2., 2., 2.],
           [0., 1., 0., 0., 2.]])
    >>> r.per_class()['recall_at_2'], r.recall_at_k[2]
    (array([1. , 0.5]), 0.75)
  """
  recall_at_k: dict[int, float]
  map_at_r: float
  r_precision: float
  num_queries: int
  num_excluded_queries: int
  classes: np.ndarray
  class_sums: np.ndarray

  @property
  def ks(self) -> tuple[int, ...]:
    """The Ks of `recall_at_k`, in the order of `class_sums`' columns."""
    return tuple(self.recall_at_k)

  def per_class(self) -> dict[str, np.ndarray]:
    """Each class's metrics: means over its own evaluated queries.

    Returns:
      `{'recall_at_<K>': [C] for each K, 'map_at_r': [C], 'r_precision': [C],
      'num_queries': [C] int64}`, rows aligned with `classes`.
    """
    count = self.class_sums[:, -1]
    columns = [f'recall_at_{k}' for k in self.ks] + ['map_at_r',
                                                     'r_precision']
    result = {name: self.class_sums[:, i] / count
              for i, name in enumerate(columns)}
    result['num_queries'] = np.round(count).astype(np.int64)
    return result


@functools.partial(
    jax.jit,
    static_argnames=('num_neighbours', 'ks', 'exclude_self', 'num_classes'))
def retrieval_block(queries, refs, query_ids, ref_ids, row_valid, offset,
                    num_relevant, *, num_neighbours, ks, exclude_self,
                    num_classes):
  """Sums of the retrieval metrics over one block's valid queries.

  Returns:
    `(sums, class_sums)`: `[len(ks) + 3]` float32 hits at each K, then the
    sums of AP@R and R-precision, then the number of queries evaluated; and
    `[num_classes, len(ks) + 3]` float32, the same sums by query class id (a
    segment sum over the block's queries, not its pairs).
  """
  similarity = _pair_counts.block_similarity(queries, refs)
  return ranking_sums(similarity, query_ids, ref_ids, row_valid, offset,
                      num_relevant, num_neighbours=num_neighbours, ks=ks,
                      exclude_self=exclude_self, num_classes=num_classes)


def ranking_sums(similarity, query_ids, ref_ids, row_valid, offset,
                 num_relevant, *, num_neighbours, ks, exclude_self,
                 num_classes):
  """`retrieval_block`'s sums from the block's `[b, R]` similarity (traced:
  call it inside a jit-compiled kernel)."""
  # top_k ranks -0.0 below +0.0; they tie, and ties go to the lowest index.
  similarity = jnp.where(similarity == 0, 0.0, similarity)
  if exclude_self:
    self_pairs = _pair_counts.self_pair_mask(similarity.shape, offset)
    similarity = jnp.where(self_pairs, -jnp.inf, similarity)
  # On ties top_k puts the lower index first.
  _, neighbours = jax.lax.top_k(similarity, num_neighbours)
  relevant = ref_ids[neighbours] == query_ids[:, None]
  hits_so_far = jnp.cumsum(relevant, axis=1)
  ranks = jnp.arange(1, num_neighbours + 1)
  r = num_relevant
  within_r = ranks[None, :] <= r[:, None]
  safe_r = jnp.maximum(r, 1)
  average_precision = jnp.sum(
      jnp.where(relevant & within_r, hits_so_far / ranks, 0.0), axis=1) / safe_r
  r_index = jnp.clip(r - 1, 0, num_neighbours - 1)
  r_precision = jnp.take_along_axis(
      hits_so_far, r_index[:, None], axis=1)[:, 0] / safe_r
  evaluated = row_valid & (r > 0)
  recall = [hits_so_far[:, min(k, num_neighbours) - 1] > 0 for k in ks]
  per_query = jnp.stack(
      recall + [average_precision, r_precision, jnp.ones_like(r_precision)],
      axis=1)
  per_query = jnp.where(evaluated[:, None], per_query, 0.0)
  class_sums = jax.ops.segment_sum(per_query, query_ids,
                                   num_segments=num_classes)
  return jnp.sum(per_query, axis=0), class_sums


@dataclasses.dataclass(frozen=True)
class RetrievalPlan:
  """What a pass needs to rank: the Ks, the depth, each query's R."""
  ks: tuple[int, ...]
  num_neighbours: int
  num_relevant: np.ndarray  # [Q + one block of padding] same-class references

  def block_relevant(self, block: _pair_counts.Block) -> jax.Array:
    rows = len(block.row_valid)
    return jnp.asarray(
        self.num_relevant[block.offset:block.offset + rows], jnp.int32)


def plan(source: _pair_counts.PairSource, ks: Sequence[int]) -> RetrievalPlan:
  """Ranks deep enough for the largest K and the largest R of any query."""
  ks = tuple(sorted(set(_checks.check_positive_ints('ks', ks))))
  _pair_counts.check_has_positives(source)
  refs_per_class = np.bincount(source.ref_ids, minlength=source.num_classes)
  num_relevant = refs_per_class[source.query_ids] - int(source.exclude_self)
  candidates = source.num_refs - int(source.exclude_self)
  depth = max(1, min(candidates, max(ks[-1], int(num_relevant.max()))))
  return RetrievalPlan(
      ks=ks, num_neighbours=depth,
      num_relevant=np.pad(num_relevant, (0, source.rows_per_block)))


def summarize(source: _pair_counts.PairSource, retrieval_plan: RetrievalPlan,
              sums: np.ndarray, class_sums: np.ndarray) -> RetrievalMetrics:
  """Means of the per-query sums accumulated over the blocks.

  Args:
    source: the pair source ranked.
    retrieval_plan: its plan.
    sums: `[len(ks) + 3]` float64 sums over all blocks.
    class_sums: `[source.num_classes, len(ks) + 3]` float64 sums by class.

  Returns:
    `RetrievalMetrics`, with the rows of the classes that have a query
    evaluated.
  """
  ks = retrieval_plan.ks
  has_queries = class_sums[:, -1] > 0
  evaluated = int(round(sums[-1]))
  mean = lambda total: float(total / evaluated) if evaluated else float('nan')
  return RetrievalMetrics(
      recall_at_k={k: mean(sums[i]) for i, k in enumerate(ks)},
      map_at_r=mean(sums[len(ks)]),
      r_precision=mean(sums[len(ks) + 1]),
      num_queries=evaluated,
      num_excluded_queries=source.num_queries - evaluated,
      classes=source.classes[has_queries],
      class_sums=np.asarray(class_sums[has_queries], np.float64))


def retrieval_metrics(source: _pair_counts.PairSource, ks: Sequence[int],
                      progress: _pair_counts.ProgressFn | None = None
                      ) -> RetrievalMetrics:
  """Recall@K (each K of `ks`), MAP@R and R-precision of a pair source."""
  retrieval_plan = plan(source, ks)
  ref_ids = jnp.asarray(source.ref_ids)
  sums = np.zeros(len(retrieval_plan.ks) + 3, np.float64)
  class_sums = np.zeros((source.num_classes, len(sums)), np.float64)
  for block in _pair_counts.blocks(source, progress):
    block_sums, block_class_sums = retrieval_block(
        block.queries, block.refs, block.query_ids, ref_ids, block.row_valid,
        block.offset, retrieval_plan.block_relevant(block),
        num_neighbours=retrieval_plan.num_neighbours, ks=retrieval_plan.ks,
        exclude_self=source.exclude_self, num_classes=source.num_classes)
    sums += np.asarray(block_sums, np.float64)
    class_sums += np.asarray(block_class_sums, np.float64)
  return summarize(source, retrieval_plan, sums, class_sums)


def _matrix_metrics(similarity, labels, ref_labels, ks, block_size):
  source = _pair_counts.source_from_similarity(
      similarity, labels, ref_labels, block_size=block_size)
  return retrieval_metrics(source, ks)


def recall_at_k(similarity, labels, ref_labels=None, *,
                ks: Sequence[int] = (1, 2, 4, 8),
                block_size: int | None = None) -> dict[int, float]:
  """Recall@K for each K of `ks`, leave-one-out.

  Args:
    similarity: `[Q, R]` cosine similarities.
    labels: `[Q]` integer class ids of the queries.
    ref_labels: `[R]` class ids of the references; default: the queries (each
      query then ranks all other samples).
    ks: the K values.
    block_size: query rows per block (default: adapted to R).

  Returns:
    `{K: Recall@K}`.

  Raises:
    ValueError: no query has a positive (every class a single sample, or
      no query's class among `ref_labels`), as for `opis`: the metrics
      would be 0/0; a similarity beyond [-1, 1]; labels of the wrong length.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.5, 0.9], [0.5, 1.0, 0.2], [0.9, 0.2, 1.0]])
    >>> # Query 0 ranks 2 before 1; query 1 finds 0 first; 2 has no pair.
    >>> metrics.recall_at_k(s, [0, 0, 1], ks=(1, 2))
    {1: 0.5, 2: 1.0}
  """
  return _matrix_metrics(similarity, labels, ref_labels, ks,
                         block_size).recall_at_k


def map_at_r(similarity, labels, ref_labels=None, *,
             block_size: int | None = None) -> float:
  """MAP@R, leave-one-out: see `recall_at_k` for the arguments.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.5, 0.9], [0.5, 1.0, 0.2], [0.9, 0.2, 1.0]])
    >>> metrics.map_at_r(s, [0, 0, 1])  # R = 1: query 0 misses, query 1 hits
    0.5
  """
  return _matrix_metrics(similarity, labels, ref_labels, (1,),
                         block_size).map_at_r


def r_precision(similarity, labels, ref_labels=None, *,
                block_size: int | None = None) -> float:
  """R-precision, leave-one-out: see `recall_at_k` for the arguments.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.5, 0.9], [0.5, 1.0, 0.2], [0.9, 0.2, 1.0]])
    >>> metrics.r_precision(s, [0, 0, 1])
    0.5
  """
  return _matrix_metrics(similarity, labels, ref_labels, (1,),
                         block_size).r_precision
