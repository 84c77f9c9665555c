"""Pair-based losses: contrastive, triplet and multi-similarity.

Each takes a `[q, r]` cosine similarity with labels, in the same form as
`tcm_loss` (references default to the queries with self pairs excluded,
`where`/`ref_where` padding masks), and is computed from sums and counts, so
that its cross-device form (`sharded_*`) sums them over the mesh before
dividing: value and gradients equal one device holding the global batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tcm_jax import _checks
from tcm_jax.losses import _pairs


class MeanStatistics(NamedTuple):
  """A loss that is a mean: the sum of its terms and their number."""
  total: jax.Array
  count: jax.Array


def mean_of(stats: MeanStatistics) -> jax.Array:
  """`total / count`; 0 with zero gradient when nothing was counted."""
  return stats.total / jnp.maximum(stats.count, 1.0)


class ContrastiveStatistics(NamedTuple):
  """Hinge sums and pair counts of `contrastive_loss`; sum them across devices.

  Attributes:
    pos_sum: sum of `[margin_pos - S]_+` over the positive pairs.
    pos_count: number of positive pairs.
    neg_sum: sum of `[S - margin_neg]_+` over the negative pairs.
    neg_count: number of negative pairs.
  """
  pos_sum: jax.Array
  pos_count: jax.Array
  neg_sum: jax.Array
  neg_count: jax.Array


def contrastive_statistics(similarity, labels, ref_labels=None, *,
                           margin_pos: float = 1.0, margin_neg: float = 0.0,
                           where=None, ref_where=None, exclude_self=None,
                           query_offset=0) -> ContrastiveStatistics:
  """Hinge sums and pair counts of `contrastive_loss`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> stats = advanced.contrastive_statistics(s, jnp.array([0, 0, 1]))
    >>> int(stats.pos_count), int(stats.neg_count)
    (2, 4)
  """
  _checks.check_in_range('margin_pos', margin_pos, -1.0, 1.0)
  _checks.check_in_range('margin_neg', margin_neg, -1.0, 1.0)
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  not_finite = _pairs.nan_if_not_finite(similarity, masks)
  return ContrastiveStatistics(
      pos_sum=not_finite + jnp.sum(
          masks.positive * jax.nn.relu(margin_pos - similarity)),
      pos_count=jnp.sum(masks.positive),
      neg_sum=not_finite + jnp.sum(
          masks.negative * jax.nn.relu(similarity - margin_neg)),
      neg_count=jnp.sum(masks.negative))


def contrastive_loss_from_statistics(
    stats: ContrastiveStatistics) -> jax.Array:
  """`contrastive_loss` from (possibly cross-device summed) statistics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> stats = advanced.contrastive_statistics(s, jnp.array([0, 0, 1]))
    >>> print(f'{advanced.contrastive_loss_from_statistics(stats):.4f}')
    0.3500
  """
  return (mean_of(MeanStatistics(stats.pos_sum, stats.pos_count))
          + mean_of(MeanStatistics(stats.neg_sum, stats.neg_count)))


def contrastive_loss(similarity, labels, ref_labels=None, *,
                     margin_pos: float = 1.0, margin_neg: float = 0.0,
                     where=None, ref_where=None, exclude_self=None,
                     query_offset=0) -> jax.Array:
  """Contrastive loss in cosine similarity.

  .. math::

    L = \\text{mean}_{pos} [m_+ - S]_+ + \\text{mean}_{neg} [S - m_-]_+

  each mean over all pairs of its kind (a kind with no pair gives 0).
  Defaults: `margin_pos = 1` (pull positives together), `margin_neg = 0`
  (push negatives to orthogonal), the cosine form of pytorch-metric-learning.

  Args:
    similarity: `[q, r]` cosine similarities.
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; default: the queries.
    margin_pos: similarity positives should reach, in [-1, 1].
    margin_neg: similarity negatives should stay under, in [-1, 1].
    where: optional `[q]` padding mask; `ref_where`, `exclude_self`,
      `query_offset`: as for `tcm_loss`.
    ref_where: see `tcm_loss`.
    exclude_self: see `tcm_loss`.
    query_offset: see `tcm_loss`.

  Returns:
    Scalar loss.

  References:
    Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an
    Invariant Mapping", CVPR 2006.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> # positives: 1 - 0.8 twice; negatives: 0.3 twice, 0 twice
    >>> print(f'{losses.contrastive_loss(s, jnp.array([0, 0, 1])):.4f}')
    0.3500
  """
  return contrastive_loss_from_statistics(contrastive_statistics(
      similarity, labels, ref_labels, margin_pos=margin_pos,
      margin_neg=margin_neg, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset))


def _masked_extreme(values, mask, fn, empty):
  """Per row, `fn` (jnp.min or jnp.max) of the masked values; `empty` for a
  row without any (and for a batch without references)."""
  return fn(jnp.where(mask > 0, values, empty), axis=1, initial=empty)


def triplet_statistics(similarity, labels, ref_labels=None, *,
                       margin: float = 0.05, mining: str = 'all', where=None,
                       ref_where=None, exclude_self=None,
                       query_offset=0) -> MeanStatistics:
  """Sum and number of the triplet terms of `triplet_loss`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> stats = advanced.triplet_statistics(s, jnp.array([0, 0, 1]))
    >>> int(stats.count)  # 2 anchors x 1 positive x 1 negative
    2
  """
  _checks.check_in_range('margin', margin, 0.0, 2.0)
  if mining not in ('all', 'batch_hard', 'semi_hard'):
    raise ValueError("mining must be 'all', 'batch_hard' or 'semi_hard', got "
                     f'{mining!r}.')
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  not_finite = _pairs.nan_if_not_finite(similarity, masks)
  if mining == 'batch_hard':
    hardest_pos = _masked_extreme(similarity, masks.positive, jnp.min, 2.0)
    hardest_neg = _masked_extreme(similarity, masks.negative, jnp.max, -2.0)
    has_both = (jnp.minimum(jnp.sum(masks.positive, axis=1), 1.0)
                * jnp.minimum(jnp.sum(masks.negative, axis=1), 1.0))
    terms = has_both * jax.nn.relu(hardest_neg - hardest_pos + margin)
    return MeanStatistics(not_finite + jnp.sum(terms), jnp.sum(has_both))

  def one_anchor(row):
    """Sum and number of the selected triplets of one anchor."""
    s, pos, neg = row  # [r] each
    s_ap, s_an = s[:, None], s[None, :]  # [positive r, negative r]
    valid = pos[:, None] * neg[None, :]
    if mining == 'all':
      return (jnp.sum(valid * jax.nn.relu(s_an - s_ap + margin)),
              jnp.sum(valid))
    # Negatives less similar than the positive but within the margin; each
    # (anchor, positive) keeps the most similar of them.
    gap = s_ap - s_an
    semi = valid * (1.0 - _pairs.at_most(gap, 0.0)) * (
        1.0 - _pairs.at_least(gap, margin))
    hardest = jnp.max(jnp.where(semi > 0, s_an, -2.0), axis=1, initial=-2.0)
    has_semi = jnp.minimum(jnp.sum(semi, axis=1), 1.0)
    return (jnp.sum(has_semi * jax.nn.relu(hardest - s + margin)),
            jnp.sum(has_semi))

  totals, counts = _pairs.map_queries(
      one_anchor, (similarity, masks.positive, masks.negative),
      similarity.shape[1] ** 2)
  return MeanStatistics(not_finite + jnp.sum(totals), jnp.sum(counts))


def triplet_loss_from_statistics(stats: MeanStatistics) -> jax.Array:
  """`triplet_loss` from (possibly cross-device summed) statistics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.5, 0.52], [0.5, 1.0, 0.1], [0.52, 0.1, 1.0]])
    >>> stats = advanced.triplet_statistics(s, jnp.array([0, 0, 1]),
    ...                                     mining='batch_hard')
    >>> print(f'{advanced.triplet_loss_from_statistics(stats):.4f}')
    0.0350
  """
  return mean_of(stats)


def triplet_loss(similarity, labels, ref_labels=None, *, margin: float = 0.05,
                 mining: str = 'all', where=None, ref_where=None,
                 exclude_self=None, query_offset=0) -> jax.Array:
  """Triplet margin loss in cosine similarity, with three minings.

  For an anchor `a`, positive `p` and negative `n`, the term is
  `[S_an - S_ap + margin]_+`. `mining` picks the triplets:

  - `'all'`: every valid triplet, mean over all of them;
  - `'batch_hard'`: per anchor its least similar positive and most similar
    negative, mean over anchors with both (Hermans et al. 2017);
  - `'semi_hard'`: per (anchor, positive) the most similar negative among
    those with `S_ap - margin < S_an < S_ap` (Schroff et al. 2015), mean over
    the pairs that have one; pairs without are left out.

  A batch without any selected triplet gives 0. Default margin 0.05 (that of
  pytorch-metric-learning for cosine similarity).

  Args:
    similarity: `[q, r]` cosine similarities.
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; default: the queries.
    margin: the margin, in [0, 2].
    mining: `'all'`, `'batch_hard'` or `'semi_hard'`.
    where: see `tcm_loss`.
    ref_where: see `tcm_loss`.
    exclude_self: see `tcm_loss`.
    query_offset: see `tcm_loss`.

  Returns:
    Scalar loss.

  References:
    Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015; Hermans, Beyer,
    Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
    2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> s = jnp.array([[1.0, 0.5, 0.52], [0.5, 1.0, 0.1], [0.52, 0.1, 1.0]])
    >>> labels = jnp.array([0, 0, 1])
    >>> # Anchor 0: 0.52 - 0.5 + 0.05; anchor 1: 0.1 - 0.5 + 0.05 < 0.
    >>> print(f"{losses.triplet_loss(s, labels, mining='batch_hard'):.4f}")
    0.0350
  """
  return triplet_loss_from_statistics(triplet_statistics(
      similarity, labels, ref_labels, margin=margin, mining=mining,
      where=where, ref_where=ref_where, exclude_self=exclude_self,
      query_offset=query_offset))


def _log1p_sum_exp(x, mask):
  """`log(1 + sum(exp(x) over mask))` per row, stably; 0 on empty rows."""
  shift = jax.lax.stop_gradient(
      jnp.maximum(jnp.max(jnp.where(mask > 0, x, -jnp.inf), axis=1,
                          initial=-jnp.inf), 0.0))
  safe = jnp.where(mask > 0, x - shift[:, None], -jnp.inf)
  return shift + jnp.log(jnp.exp(-shift) + jnp.sum(jnp.exp(safe), axis=1))


def multi_similarity_statistics(similarity, labels, ref_labels=None, *,
                                alpha: float = 2.0, beta: float = 50.0,
                                base: float = 0.5, epsilon: float = 0.1,
                                where=None, ref_where=None, exclude_self=None,
                                query_offset=0) -> MeanStatistics:
  """Sum over anchors of the terms of `multi_similarity_loss`, and count.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> stats = advanced.multi_similarity_statistics(s, jnp.array([0, 0, 1]))
    >>> int(stats.count)  # anchors with any pair
    3
  """
  _checks.check_positive('alpha', alpha)
  _checks.check_positive('beta', beta)
  _checks.check_in_range('base', base, -1.0, 1.0)
  _checks.check_in_range('epsilon', epsilon, 0.0, 2.0)
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  # Pair mining (not differentiated): hard negatives are more similar than
  # the least similar positive minus epsilon; hard positives less similar
  # than the most similar negative plus epsilon.
  s = jax.lax.stop_gradient(similarity)
  least_pos = _masked_extreme(s, masks.positive, jnp.min, 3.0)
  most_neg = _masked_extreme(s, masks.negative, jnp.max, -3.0)
  hard_neg = masks.negative * (1.0 - _pairs.at_most(
      s - least_pos[:, None], -epsilon))
  hard_pos = masks.positive * (1.0 - _pairs.at_least(
      s - most_neg[:, None], epsilon))
  pos_term = _log1p_sum_exp(-alpha * (similarity - base), hard_pos) / alpha
  neg_term = _log1p_sum_exp(beta * (similarity - base), hard_neg) / beta
  valid_rows = jnp.minimum(jnp.sum(masks.positive + masks.negative, axis=1),
                           1.0)
  # The mining drops a NaN pair: the loss must not (see nan_if_not_finite).
  return MeanStatistics(
      _pairs.nan_if_not_finite(similarity, masks)
      + jnp.sum(valid_rows * (pos_term + neg_term)), jnp.sum(valid_rows))


def multi_similarity_loss_from_statistics(stats: MeanStatistics) -> jax.Array:
  """`multi_similarity_loss` from (possibly cross-device summed) statistics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.5, 0.45], [0.5, 1.0, 0.1], [0.45, 0.1, 1.0]])
    >>> stats = advanced.multi_similarity_statistics(s, jnp.array([0, 0, 1]))
    >>> print(f'{advanced.multi_similarity_loss_from_statistics(stats):.4f}')
    0.1161
  """
  return mean_of(stats)


def multi_similarity_loss(similarity, labels, ref_labels=None, *,
                          alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, epsilon: float = 0.1, where=None,
                          ref_where=None, exclude_self=None,
                          query_offset=0) -> jax.Array:
  """Multi-similarity loss with its pair mining.

  For each anchor `i`, hard negatives are negatives with
  `S_ik > min_{pos} S_ij - epsilon` and hard positives positives with
  `S_ij < max_{neg} S_ik + epsilon`; then

  .. math::

    L_i = \\frac{1}{\\alpha} \\log\\left(1 + \\sum_{hard\\,pos}
          e^{-\\alpha (S_{ij} - \\lambda)}\\right)
        + \\frac{1}{\\beta} \\log\\left(1 + \\sum_{hard\\,neg}
          e^{\\beta (S_{ik} - \\lambda)}\\right)

  averaged over the anchors that have any pair. The mining is not
  differentiated. Defaults: alpha 2, beta 50, lambda (`base`) 0.5, epsilon
  0.1, those of the authors' released code and pytorch-metric-learning.

  Args:
    similarity: `[q, r]` cosine similarities.
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; default: the queries.
    alpha: positive scale, > 0.
    beta: negative scale, > 0.
    base: the similarity offset lambda, in [-1, 1].
    epsilon: the mining margin, in [0, 2].
    where: see `tcm_loss`.
    ref_where: see `tcm_loss`.
    exclude_self: see `tcm_loss`.
    query_offset: see `tcm_loss`.

  Returns:
    Scalar loss.

  References:
    Wang, Han, Huang, Dong, Scott, "Multi-Similarity Loss with General Pair
    Weighting for Deep Metric Learning", CVPR 2019.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> s = jnp.array([[1.0, 0.5, 0.45], [0.5, 1.0, 0.1], [0.45, 0.1, 1.0]])
    >>> # Anchor 0: its positive (0.5) and hard negative (0.45) are mined:
    >>> # log(1 + 1) / 2 + log(1 + exp(-2.5)) / 50. Anchors 1, 2: nothing.
    >>> print(f'{losses.multi_similarity_loss(s, jnp.array([0, 0, 1])):.4f}')
    0.1161
  """
  return multi_similarity_loss_from_statistics(multi_similarity_statistics(
      similarity, labels, ref_labels, alpha=alpha, beta=beta, base=base,
      epsilon=epsilon, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset))


@_pairs.sharded_form('contrastive_loss')
def sharded_contrastive_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    margin_pos: float = 1.0,
    margin_neg: float = 0.0,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """`contrastive_loss` of the global batch, from inside `jax.shard_map`.

  Local queries against all-gathered references; the statistics are summed
  over `axis_name` before dividing (see `sharded_tcm_loss`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    margin_pos: see `contrastive_loss`.
    margin_neg: see `contrastive_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return contrastive_loss_from_statistics(_pairs.sharded_statistics(
      functools.partial(contrastive_statistics, margin_pos=margin_pos,
                        margin_neg=margin_neg),
      embeddings, labels, axis_name=axis_name, where=where,
      precision=precision))


@_pairs.sharded_form('triplet_loss')
def sharded_triplet_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    margin: float = 0.05,
    mining: str = 'all',
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """`triplet_loss` of the global batch, from inside `jax.shard_map`.

  Local anchors against all-gathered references; the statistics are summed
  over `axis_name` before dividing (see `sharded_tcm_loss`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    margin: see `triplet_loss`.
    mining: see `triplet_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return triplet_loss_from_statistics(_pairs.sharded_statistics(
      functools.partial(triplet_statistics, margin=margin, mining=mining),
      embeddings, labels, axis_name=axis_name, where=where,
      precision=precision))


@_pairs.sharded_form('multi_similarity_loss')
def sharded_multi_similarity_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """`multi_similarity_loss` of the global batch, from inside `jax.shard_map`.

  Local anchors against all-gathered references, mined among all of them;
  the statistics are summed over `axis_name` before dividing (see
  `sharded_tcm_loss`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    alpha: see `multi_similarity_loss`.
    beta: see `multi_similarity_loss`.
    base: see `multi_similarity_loss`.
    epsilon: see `multi_similarity_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return multi_similarity_loss_from_statistics(_pairs.sharded_statistics(
      functools.partial(multi_similarity_statistics, alpha=alpha, beta=beta,
                        base=base, epsilon=epsilon),
      embeddings, labels, axis_name=axis_name, where=where,
      precision=precision))
