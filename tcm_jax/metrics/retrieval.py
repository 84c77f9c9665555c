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

from tcm_jax.metrics import pair_counts


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
  """Retrieval accuracy over the queries that have a same-class reference.

  Attributes:
    recall_at_k: `{K: Recall@K}`.
    map_at_r: MAP@R.
    r_precision: R-precision.
    num_queries: queries evaluated.
    num_excluded_queries: queries left out: no other reference of their class.
  """
  recall_at_k: dict[int, float]
  map_at_r: float
  r_precision: float
  num_queries: int
  num_excluded_queries: int


@functools.partial(
    jax.jit, static_argnames=('num_neighbours', 'ks', 'exclude_self'))
def retrieval_block(queries, refs, query_ids, ref_ids, row_valid, offset,
                    num_relevant, *, num_neighbours, ks, exclude_self):
  """Sums of the retrieval metrics over one block's valid queries.

  Returns:
    `[len(ks) + 3]` float32: hits at each K, then the sums of AP@R and
    R-precision, then the number of queries evaluated.
  """
  similarity = pair_counts.block_similarity(queries, refs)
  # top_k ranks -0.0 below +0.0; they tie, and ties go to the lowest index.
  similarity = jnp.where(similarity == 0, 0.0, similarity)
  if exclude_self:
    similarity = jnp.where(pair_counts.self_pair_mask(similarity.shape, offset),
                           -jnp.inf, similarity)
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
  return jnp.sum(jnp.where(evaluated[:, None], per_query, 0.0), axis=0)


@dataclasses.dataclass(frozen=True)
class RetrievalPlan:
  """What a pass needs to rank: the Ks, the depth, each query's R."""
  ks: tuple[int, ...]
  num_neighbours: int
  num_relevant: np.ndarray  # [Q + one block of padding] same-class references

  def block_relevant(self, block: pair_counts.Block) -> jax.Array:
    rows = len(block.row_valid)
    return jnp.asarray(
        self.num_relevant[block.offset:block.offset + rows], jnp.int32)


def plan(source: pair_counts.PairSource, ks: Sequence[int]) -> RetrievalPlan:
  """Ranks deep enough for the largest K and the largest R of any query."""
  ks = tuple(sorted({int(k) for k in ks}))
  if not ks or ks[0] < 1:
    raise ValueError(f'ks must be positive integers, got {ks}.')
  refs_per_class = np.bincount(source.ref_ids, minlength=source.num_classes)
  num_relevant = refs_per_class[source.query_ids] - int(source.exclude_self)
  candidates = source.num_refs - int(source.exclude_self)
  depth = max(1, min(candidates, max(ks[-1], int(num_relevant.max()))))
  return RetrievalPlan(
      ks=ks, num_neighbours=depth,
      num_relevant=np.pad(num_relevant, (0, source.rows_per_block)))


def summarize(source: pair_counts.PairSource, retrieval_plan: RetrievalPlan,
              sums: np.ndarray) -> RetrievalMetrics:
  """Means of the per-query sums accumulated over the blocks."""
  ks = retrieval_plan.ks
  evaluated = int(round(sums[-1]))
  mean = lambda total: float(total / evaluated) if evaluated else float('nan')
  return RetrievalMetrics(
      recall_at_k={k: mean(sums[i]) for i, k in enumerate(ks)},
      map_at_r=mean(sums[len(ks)]),
      r_precision=mean(sums[len(ks) + 1]),
      num_queries=evaluated,
      num_excluded_queries=source.num_queries - evaluated)


def retrieval_metrics(source: pair_counts.PairSource, ks: Sequence[int],
                      progress: pair_counts.ProgressFn | None = None
                      ) -> RetrievalMetrics:
  """Recall@K (each K of `ks`), MAP@R and R-precision of a pair source."""
  retrieval_plan = plan(source, ks)
  ref_ids = jnp.asarray(source.ref_ids)
  sums = np.zeros(len(retrieval_plan.ks) + 3, np.float64)
  for block in pair_counts.blocks(source, progress):
    sums += np.asarray(retrieval_block(
        block.queries, block.refs, block.query_ids, ref_ids, block.row_valid,
        block.offset, retrieval_plan.block_relevant(block),
        num_neighbours=retrieval_plan.num_neighbours, ks=retrieval_plan.ks,
        exclude_self=source.exclude_self), np.float64)
  return summarize(source, retrieval_plan, sums)


def _matrix_metrics(similarity, labels, ref_labels, ks, block_size):
  source = pair_counts.source_from_similarity(
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
