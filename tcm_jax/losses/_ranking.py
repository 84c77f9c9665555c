"""Ranking losses: Smooth-AP and the Recall@k surrogate.

Both smooth the rank of each positive reference `i` of a query `q` among the
query's references with a sigmoid of similarity differences:

.. math::

  r_\\Omega(q, i) = 1 + \\sum_{j \\in \\Omega_q, j \\neq i}
      \\sigma\\left(\\frac{S_{qj} - S_{qi}}{\\tau}\\right)

where `Omega_q` is every reference of `q` except `q` itself, and `r_P` the same
sum over the positives `P_q` only. Each loss is `1 -` a mean over the queries
that have a positive, so across devices it is a ratio of two sums (`psum`
before dividing), like `tcm_loss`.

The exact form costs `[q, r, r]` sigmoids; with class-balanced batches each
query has a handful of positives, and `max_positives` (static) bounds the work
to `[q, max_positives, r]`. A query with more positives than that scores only
its first `max_positives` by reference index: Smooth-AP then averages over
those, and Recall@k counts those found in the top k against
`min(k, |P_q|)` over all its positives.

References:
  Brown, Xie, Kalogeiton, Zisserman, "Smooth-AP: Smoothing the Path Towards
  Large-Scale Image Retrieval", ECCV 2020.
  Patel, Tolias, Matas, "Recall@k Surrogate Loss with Large Batches and
  Similarity Mixup", CVPR 2022.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from tcm_jax import _checks
from tcm_jax.losses import _pairs


class RankingStatistics(NamedTuple):
  """Sum of the per-query scores and the number of queries scored."""
  score_sum: jax.Array
  num_queries: jax.Array


def _smooth_ranks(similarity, positive, valid, temperature, max_positives):
  """Smoothed ranks of each query's positives among all and among positives.

  Args:
    similarity: `[q, r]` similarities, finite wherever `valid`.
    positive: `[q, r]` float 0/1 positive-pair mask.
    valid: `[q, r]` float 0/1 mask of the references of each query.
    temperature: sigmoid temperature.
    max_positives: positives kept per query (static).

  Returns:
    `(rank_all, rank_pos, is_positive)`, each `[q, max_positives]`.
  """
  num_refs = similarity.shape[1]
  # The first max_positives positives of each query (ties: lowest index).
  _, index = jax.lax.top_k(positive, max_positives)
  is_positive = jnp.take_along_axis(positive, index, axis=1)

  def one_query(row):
    s, pos, val, idx = row  # [r], [r], [r], [max_positives]
    sig = jax.nn.sigmoid((s[None, :] - s[idx][:, None]) / temperature)
    not_i = 1.0 - _pairs.equal(jnp.arange(num_refs, dtype=jnp.float32)[None, :],
                               idx.astype(jnp.float32)[:, None])
    rank_all = 1.0 + jnp.sum(sig * val[None, :] * not_i, axis=1)
    rank_pos = 1.0 + jnp.sum(sig * pos[None, :] * not_i, axis=1)
    return rank_all, rank_pos

  rank_all, rank_pos = _pairs.map_queries(
      one_query, (similarity, positive, valid, index),
      max_positives * num_refs)
  return rank_all, rank_pos, is_positive


def _max_positives(max_positives, num_refs):
  max_positives = _checks.check_optional_int('max_positives', max_positives)
  return num_refs if max_positives is None else min(max_positives, num_refs)


def smooth_ap_statistics(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    temperature: float = 0.01,
    max_positives: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> RankingStatistics:
  """Sum over queries of the smoothed average precision, and their count.

  See `smooth_ap_loss` for the arguments.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> stats = advanced.smooth_ap_statistics(s, jnp.array([0, 0, 1]))
    >>> int(stats.num_queries)  # queries with a positive
    2
  """
  _checks.check_positive('temperature', temperature)
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  valid = masks.positive + masks.negative
  rank_all, rank_pos, is_positive = _smooth_ranks(
      similarity, masks.positive, valid, temperature,
      _max_positives(max_positives, similarity.shape[1]))
  count = jnp.sum(is_positive, axis=1)
  precision = jnp.sum(is_positive * rank_pos / rank_all, axis=1)
  has_positive = jnp.minimum(count, 1.0)
  return RankingStatistics(
      score_sum=_pairs.nan_if_not_finite(similarity, masks)
      + jnp.sum(precision / jnp.maximum(count, 1.0)),
      num_queries=jnp.sum(has_positive))


def _one_minus_mean_score(stats: RankingStatistics) -> jax.Array:
  """`1 - mean score`; 0 (with zero gradient) when no query has a positive,
  NaN when the score sum is (a non-finite pair took part)."""
  return jnp.where(stats.num_queries > 0,
                   1.0 - stats.score_sum / jnp.maximum(stats.num_queries, 1.0),
                   0.0 * stats.score_sum)


def smooth_ap_loss_from_statistics(stats: RankingStatistics) -> jax.Array:
  """`smooth_ap_loss` from (possibly cross-device summed) statistics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> stats = advanced.smooth_ap_statistics(s, jnp.array([0, 0, 1]))
    >>> print(f'{advanced.smooth_ap_loss_from_statistics(stats):.4f}')
    0.0000
  """
  return _one_minus_mean_score(stats)


def smooth_ap_loss(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    temperature: float = 0.01,
    max_positives: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> jax.Array:
  """Smooth-AP: one minus the smoothed average precision of each query.

  .. math::

    AP(q) = \\frac{1}{|P_q|} \\sum_{i \\in P_q}
            \\frac{r_P(q, i)}{r_\\Omega(q, i)}, \\qquad
    L = 1 - \\text{mean}_q \\, AP(q)

  over the queries with at least one positive (a batch with none gives 0).

  Args:
    similarity: `[q, r]` cosine similarities.
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; default: the queries
      (self pairs excluded).
    temperature: sigmoid temperature (the paper's 0.01), > 0.
    max_positives: static bound on the positives scored per query (None:
      all; see the module docstring).
    where: optional `[q]` boolean mask, False for padded queries.
    ref_where: optional `[r]` mask for padded references (only with
      `ref_labels`).
    exclude_self: drop query `i` against reference `i + query_offset`;
      defaults to `ref_labels is None`.
    query_offset: index of the first query among the references, an integer
      in `[0, r - q]` (checked when known; see `advanced.pair_masks` for a
      traced one).

  Returns:
    Scalar loss in [0, 1).

  References:
    Brown et al., "Smooth-AP: Smoothing the Path Towards Large-Scale Image
    Retrieval", ECCV 2020.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> # Each positive outranks the negative: AP = 1 for queries 0 and 1.
    >>> print(f'{losses.smooth_ap_loss(s, jnp.array([0, 0, 1])):.4f}')
    0.0000
  """
  return smooth_ap_loss_from_statistics(smooth_ap_statistics(
      similarity, labels, ref_labels, temperature=temperature,
      max_positives=max_positives, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset))


def recall_at_k_statistics(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    temperature: float = 0.01,
    k_temperature: float = 1.0,
    max_positives: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> RankingStatistics:
  """Sum over queries of the mean smoothed Recall@k, and their count.

  See `recall_at_k_loss` for the arguments.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> stats = advanced.recall_at_k_statistics(s, jnp.array([0, 0, 1]))
    >>> int(stats.num_queries)  # queries with a positive
    2
  """
  _checks.check_positive('temperature', temperature)
  _checks.check_positive('k_temperature', k_temperature)
  ks = _checks.check_positive_ints('ks', ks)
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  valid = masks.positive + masks.negative
  rank_all, _, is_positive = _smooth_ranks(
      similarity, masks.positive, valid, temperature,
      _max_positives(max_positives, similarity.shape[1]))
  count = jnp.sum(masks.positive, axis=1)  # all positives, kept or not
  k = jnp.asarray(ks, jnp.float32)
  within_k = jax.nn.sigmoid((k[None, None, :] - rank_all[:, :, None])
                            / k_temperature)
  found = jnp.sum(is_positive[:, :, None] * within_k, axis=1)  # [q, len(ks)]
  attainable = jnp.maximum(jnp.minimum(k[None, :], count[:, None]), 1.0)
  recall = jnp.minimum(found, attainable) / attainable
  return RankingStatistics(
      score_sum=_pairs.nan_if_not_finite(similarity, masks)
      + jnp.sum(jnp.minimum(count, 1.0) * jnp.mean(recall, axis=1)),
      num_queries=jnp.sum(jnp.minimum(count, 1.0)))


def recall_at_k_loss_from_statistics(stats: RankingStatistics) -> jax.Array:
  """`recall_at_k_loss` from (possibly cross-device summed) statistics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> stats = advanced.recall_at_k_statistics(s, jnp.array([0, 0, 1]),
    ...                                         ks=(1,))
    >>> print(f'{advanced.recall_at_k_loss_from_statistics(stats):.4f}')
    0.5000
  """
  return _one_minus_mean_score(stats)


def recall_at_k_loss(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    temperature: float = 0.01,
    k_temperature: float = 1.0,
    max_positives: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> jax.Array:
  """The Recall@k surrogate: one minus the smoothed Recall@k, mean over k.

  .. math::

    \\tilde R_k(q) = \\frac{\\min\\left(\\sum_{i \\in P_q}
        \\sigma\\left(\\frac{k - r_\\Omega(q, i)}{\\tau_k}\\right),
        \\; m\\right)}{m}, \\quad m = \\min(k, |P_q|), \\qquad
    L = 1 - \\text{mean}_q \\text{mean}_k \\tilde R_k(q)

  over the queries with at least one positive (a batch with none gives 0).
  Project choices against the authors' code: the query is not among its own
  references (leave-one-out, as in the evaluation), and the count of
  positives within the top k is clipped at `min(k, |P_q|)`, so each
  smoothed recall lies in [0, 1].

  Args:
    similarity: `[q, r]` cosine similarities.
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; default: the queries
      (self pairs excluded).
    ks: the k values averaged over (the paper's 1, 2, 4, 8, 16).
    temperature: sigmoid temperature of the ranks (the paper's 0.01), > 0.
    k_temperature: sigmoid temperature of `k - rank` (the paper's 1), > 0.
    max_positives: static bound on the positives scored per query (None:
      all; see the module docstring).
    where: optional `[q]` boolean mask, False for padded queries.
    ref_where: optional `[r]` mask for padded references (only with
      `ref_labels`).
    exclude_self: drop query `i` against reference `i + query_offset`;
      defaults to `ref_labels is None`.
    query_offset: index of the first query among the references, an integer
      in `[0, r - q]` (checked when known; see `advanced.pair_masks` for a
      traced one).

  Returns:
    Scalar loss in [0, 1).

  References:
    Patel, Tolias, Matas, "Recall@k Surrogate Loss with Large Batches and
    Similarity Mixup", CVPR 2022.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> loss = losses.recall_at_k_loss(s, jnp.array([0, 0, 1]), ks=(1,))
    >>> print(f'{loss:.4f}')  # rank 1 for both positives: 1 - sigmoid(0)
    0.5000
  """
  return recall_at_k_loss_from_statistics(recall_at_k_statistics(
      similarity, labels, ref_labels, ks=ks, temperature=temperature,
      k_temperature=k_temperature, max_positives=max_positives, where=where,
      ref_where=ref_where, exclude_self=exclude_self,
      query_offset=query_offset))


@_pairs.sharded_form('smooth_ap_loss')
def sharded_smooth_ap_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    temperature: float = 0.01,
    max_positives: int | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """`smooth_ap_loss` of the global batch, from inside `jax.shard_map`.

  Local queries against all-gathered references; the score sums and counts
  are summed over `axis_name` before dividing (see `sharded_tcm_loss`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    temperature: see `smooth_ap_loss`.
    max_positives: see `smooth_ap_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return smooth_ap_loss_from_statistics(_pairs.sharded_statistics(
      functools.partial(smooth_ap_statistics, temperature=temperature,
                        max_positives=max_positives),
      embeddings, labels, axis_name=axis_name, where=where,
      precision=precision))


@_pairs.sharded_form('recall_at_k_loss')
def sharded_recall_at_k_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    temperature: float = 0.01,
    k_temperature: float = 1.0,
    max_positives: int | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """`recall_at_k_loss` of the global batch, from inside `jax.shard_map`.

  Local queries against all-gathered references; the score sums and counts
  are summed over `axis_name` before dividing (see `sharded_tcm_loss`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    ks: see `recall_at_k_loss`.
    temperature: see `recall_at_k_loss`.
    k_temperature: see `recall_at_k_loss`.
    max_positives: see `recall_at_k_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return recall_at_k_loss_from_statistics(_pairs.sharded_statistics(
      functools.partial(recall_at_k_statistics, ks=ks, temperature=temperature,
                        k_temperature=k_temperature,
                        max_positives=max_positives),
      embeddings, labels, axis_name=axis_name, where=where,
      precision=precision))
