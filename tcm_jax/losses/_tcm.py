"""The Threshold-Consistent Margin (TCM) loss.

TCM penalises hard positive pairs (same class, similarity at most `margin_pos`)
and hard negative pairs (different classes, similarity at least `margin_neg`),
each part averaged over its own hard pairs:

.. math::

  L_{tcm} = \\lambda_+ \\frac{\\sum_{hard\\,pos} (m_+ - S)}{\\#hard\\,pos}
          + \\lambda_- \\frac{\\sum_{hard\\,neg} (S - m_-)}{\\#hard\\,neg}

It is added to any base loss. The loss is a ratio of sums, so it is computed
in two steps: `tcm_statistics` (four sums, plus the pair counts for
diagnostics), then `tcm_loss_from_statistics`. Across devices the statistics
are summed over the mesh before the division (`sharded_tcm_loss`), which makes
the value and gradients those of one device holding the global batch.

`margins_from_similarity` picks the two margins from data.

References:
  Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep Metric
  Learning", ICLR 2024, https://arxiv.org/abs/2307.04047
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tcm_jax import _checks
from tcm_jax.losses import _pairs


class TCMStatistics(NamedTuple):
  """Sufficient statistics of the TCM loss; sum them across devices.

  Attributes:
    hard_pos_sum: sum of `margin_pos - S` over hard positive pairs.
    hard_pos_count: number of hard positive pairs.
    hard_neg_sum: sum of `S - margin_neg` over hard negative pairs.
    hard_neg_count: number of hard negative pairs.
    pos_count: number of positive pairs taking part.
    neg_count: number of negative pairs taking part.

  Counts are float32 so that they add across devices without overflow: exact
  below 2**24 pairs, within a relative 1e-7 beyond.
  """
  hard_pos_sum: jax.Array
  hard_pos_count: jax.Array
  hard_neg_sum: jax.Array
  hard_neg_count: jax.Array
  pos_count: jax.Array
  neg_count: jax.Array


def _check_margins(margin_pos, margin_neg) -> None:
  _checks.check_in_range('margin_pos', margin_pos, -1.0, 1.0)
  _checks.check_in_range('margin_neg', margin_neg, -1.0, 1.0)


def _check_lambdas(lambda_pos, lambda_neg) -> None:
  _checks.check_in_range('lambda_pos', lambda_pos, 0.0, math.inf)
  _checks.check_in_range('lambda_neg', lambda_neg, 0.0, math.inf)


def _mean_or_zero(total: jax.Array, count: jax.Array) -> jax.Array:
  """`total / count`, and 0 (with zero gradient) when nothing was counted."""
  return total / jnp.maximum(count, 1.0).astype(total.dtype)


def _count(mask: jax.Array) -> jax.Array:
  """Number of ones in a float32 0/1 `[q, r]` mask, as float32.

  Row sums are exact (fewer than 2**24 columns), and so is their float32
  total below 2**24 pairs; past that it is off by at most a relative 1e-7,
  which a mean does not notice, where an int32 total would wrap past 2**31.
  """
  return jnp.sum(jnp.sum(mask, axis=1))


def tcm_statistics(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    margin_pos: float = 0.9,
    margin_neg: float = 0.5,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> TCMStatistics:
  """Sums and counts of the hard pairs of a similarity matrix.

  Args:
    similarity: `[q, r]` cosine similarities (any float dtype; the sums are
      accumulated in at least float32).
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; defaults to `labels` (the
      queries are their own references and self pairs are excluded).
    margin_pos: positive pairs with similarity `<= margin_pos` are hard.
    margin_neg: negative pairs with similarity `>= margin_neg` are hard.
    where: optional `[q]` boolean mask, False for padded queries.
    ref_where: optional `[r]` boolean mask, False for padded references
      (must be None when `ref_labels` is None; `where` then masks both).
    exclude_self: drop query `i` against reference `i + query_offset`;
      defaults to `ref_labels is None`.
    query_offset: index of the first query among the references, an integer
      in `[0, r - q]` (checked when known; see `advanced.pair_masks` for a
      traced one).

  Returns:
    `TCMStatistics` of scalars.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.2], [0.6, 0.2, 1.0]])
    >>> stats = advanced.tcm_statistics(s, jnp.array([0, 0, 1]))
    >>> int(stats.hard_pos_count), int(stats.pos_count)  # (0,1) and (1,0)
    (2, 2)
    >>> int(stats.hard_neg_count), int(stats.neg_count)  # (0,2) and (2,0)
    (2, 4)
  """
  _check_margins(margin_pos, margin_neg)
  similarity, masks = _pairs.prepare(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  hard_pos = jax.lax.stop_gradient(
      masks.positive * _pairs.at_most(similarity, margin_pos))
  hard_neg = jax.lax.stop_gradient(
      masks.negative * _pairs.at_least(similarity, margin_neg))
  # A pair at +-inf is no hard pair, but must not pass unseen either.
  not_finite = _pairs.nan_if_not_finite(similarity, masks)
  return TCMStatistics(
      hard_pos_sum=not_finite + jnp.sum(hard_pos * (margin_pos - similarity)),
      hard_pos_count=_count(hard_pos),
      hard_neg_sum=not_finite + jnp.sum(hard_neg * (similarity - margin_neg)),
      hard_neg_count=_count(hard_neg),
      pos_count=_count(masks.positive),
      neg_count=_count(masks.negative),
  )


def tcm_loss_from_statistics(
    stats: TCMStatistics,
    *,
    lambda_pos: float = 1.0,
    lambda_neg: float = 1.0,
) -> jax.Array:
  """The TCM loss from (possibly cross-device summed) statistics.

  A part with no hard pair is exactly 0, with zero gradient.

  Args:
    stats: `TCMStatistics`, e.g. from `tcm_statistics`.
    lambda_pos: weight of the hard-positive part.
    lambda_neg: weight of the hard-negative part.

  Returns:
    Scalar loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.2], [0.6, 0.2, 1.0]])
    >>> stats = advanced.tcm_statistics(s, jnp.array([0, 0, 1]))
    >>> # (0.9 - 0.8) on both positives; (0.6 - 0.5) on two of four negatives.
    >>> print(f'{advanced.tcm_loss_from_statistics(stats):.4f}')
    0.2000
  """
  _check_lambdas(lambda_pos, lambda_neg)
  return (
      lambda_pos * _mean_or_zero(stats.hard_pos_sum, stats.hard_pos_count)
      + lambda_neg * _mean_or_zero(stats.hard_neg_sum, stats.hard_neg_count))


def tcm_diagnostics(stats: TCMStatistics) -> dict[str, jax.Array]:
  """What a trainer logs about TCM: the two parts and the hard-pair fractions.

  Args:
    stats: `TCMStatistics`, e.g. from `tcm_statistics` or
      `sharded_tcm_statistics`.

  Returns:
    A dict of scalars: `tcm_pos` and `tcm_neg` (the unweighted parts),
    `hard_pos_fraction` (hard positives / positive pairs) and
    `hard_neg_fraction` (hard negatives / negative pairs); 0 when a batch has
    no pair of that kind.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> s = jnp.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.2], [0.6, 0.2, 1.0]])
    >>> stats = advanced.tcm_statistics(s, jnp.array([0, 0, 1]))
    >>> d = advanced.tcm_diagnostics(stats)
    >>> print(f"{d['hard_pos_fraction']:.2f} {d['hard_neg_fraction']:.2f}")
    1.00 0.50
  """
  return {
      'tcm_pos': _mean_or_zero(stats.hard_pos_sum, stats.hard_pos_count),
      'tcm_neg': _mean_or_zero(stats.hard_neg_sum, stats.hard_neg_count),
      'hard_pos_fraction': _mean_or_zero(stats.hard_pos_count,
                                         stats.pos_count),
      'hard_neg_fraction': _mean_or_zero(stats.hard_neg_count,
                                         stats.neg_count),
  }


def tcm_loss(
    similarity: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    margin_pos: float = 0.9,
    margin_neg: float = 0.5,
    lambda_pos: float = 1.0,
    lambda_neg: float = 1.0,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> jax.Array:
  """Threshold-Consistent Margin loss over a similarity matrix.

  Hard positives are same-class pairs with `S <= margin_pos`, hard negatives
  different-class pairs with `S >= margin_neg`; pairs are ordered, so `(i, j)`
  and `(j, i)` both count::

    lambda_pos * mean_{hard pos}(margin_pos - S)
      + lambda_neg * mean_{hard neg}(S - margin_neg)

  A part with no hard pair is exactly 0, with zero gradient; so is the loss
  of an empty batch. Masked-out (padded) queries and references take no
  part, whatever they hold (NaN included), so a batch padded to a fixed shape
  gives the value of the unpadded batch and its gradients with respect to
  the similarity (padded entries get 0); so do self pairs (a diagonal of
  -inf is fine). For gradients that reach embeddings with NaN in padded rows,
  use `tcm_loss_from_embeddings`, which zeroes those rows before the
  similarity. A pair that takes part with a non-finite similarity (NaN or
  +-inf) makes the loss NaN.

  Args:
    similarity: `[q, r]` cosine similarities, e.g. from `cosine_similarity`.
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` class ids of the references; defaults to `labels` (the
      queries are their own references and self pairs are excluded).
    margin_pos: similarity margin of the positive pairs, in [-1, 1].
    margin_neg: similarity margin of the negative pairs, in [-1, 1].
    lambda_pos: weight of the hard-positive part, >= 0.
    lambda_neg: weight of the hard-negative part, >= 0.
    where: optional `[q]` boolean mask, False for padded queries.
    ref_where: optional `[r]` boolean mask, False for padded references
      (must be None when `ref_labels` is None; `where` then masks both).
    exclude_self: drop query `i` against reference `i + query_offset`;
      defaults to `ref_labels is None`.
    query_offset: index of the first query among the references, an integer
      in `[0, r - q]` (checked when known; see `advanced.pair_masks` for a
      traced one).

  Returns:
    Scalar loss, float32 (or wider if `similarity` is).

  Raises:
    ValueError: bad shapes, or margins/lambdas that are not finite or out of
      range (checked when they are Python or concrete numbers).
    TypeError: non-integer labels, non-boolean masks, non-float similarity.

  References:
    Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep Metric
    Learning", ICLR 2024, https://arxiv.org/abs/2307.04047

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import tcm_jax
    >>> z = jnp.array([[0, 1], [0.43, 0.9], [1, 0], [0.5, 0.5]])
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> s = tcm_jax.cosine_similarity(z)
    >>> print(f'{jax.jit(tcm_jax.tcm_loss)(s, labels):.6f}')
    0.517876
  """
  stats = tcm_statistics(
      similarity, labels, ref_labels, margin_pos=margin_pos,
      margin_neg=margin_neg, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  return tcm_loss_from_statistics(
      stats, lambda_pos=lambda_pos, lambda_neg=lambda_neg)


def tcm_loss_from_embeddings(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    ref_embeddings: jax.typing.ArrayLike | None = None,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    precision: jax.lax.PrecisionLike = None,
    **kwargs,
) -> jax.Array:
  """`tcm_loss` of the cosine similarities of embeddings.

  Padded rows (`where`/`ref_where` False) are set to 0 before the
  similarity: whatever they hold, NaN included, value and gradients equal
  those of the unpadded batch, and the padded rows get zero gradient. The
  similarity does not depend on the scale of the rows (`l2_normalize`).

  Args:
    embeddings: `[q, dim]` query embeddings (need not be normalised; any float
      dtype, the similarity is float32).
    labels: `[q]` integer class ids.
    ref_embeddings: optional `[r, dim]` reference embeddings; default: the
      queries (self pairs excluded).
    ref_labels: `[r]` class ids, given exactly when `ref_embeddings` is.
    precision: precision of the similarity's matrix product.
    **kwargs: the keyword arguments of `tcm_loss`.

  Returns:
    Scalar loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import tcm_jax
    >>> z = jnp.array([[0, 1], [0.43, 0.9], [1, 0], [0.5, 0.5]])
    >>> loss = tcm_jax.tcm_loss_from_embeddings(z, jnp.array([0, 0, 1, 1]))
    >>> print(f'{loss:.6f}')
    0.517876
  """
  similarity = _pairs.similarity_of_embeddings(
      embeddings, ref_embeddings, ref_labels, where=kwargs.get('where'),
      ref_where=kwargs.get('ref_where'), precision=precision)
  return tcm_loss(similarity, labels, ref_labels, **kwargs)


def sharded_tcm_statistics(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    margin_pos: float = 0.9,
    margin_neg: float = 0.5,
    precision: jax.lax.PrecisionLike = None,
) -> TCMStatistics:
  """TCM statistics of the global batch, from inside `jax.shard_map`.

  Each device compares its own rows (queries) with the all-gathered rows of
  every device (references), drops its self pairs at its own row offset, and
  the statistics are summed over `axis_name`. The result is the same on every
  device and equals `tcm_statistics` of the whole batch on one device.

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    margin_pos: see `tcm_loss`.
    margin_neg: see `tcm_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    `TCMStatistics` of the global batch.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from tcm_jax.losses import advanced
    >>> mesh = Mesh(jax.devices(), ('data',))  # any count that divides 8
    >>> z = jax.random.normal(jax.random.key(0), (8, 16))
    >>> stats_fn = jax.jit(jax.shard_map(
    ...     lambda z, y: advanced.sharded_tcm_statistics(z, y, axis_name='data'),
    ...     mesh=mesh, in_specs=(P('data'), P('data')), out_specs=P()))
    >>> stats = stats_fn(z, jnp.array([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> int(stats.pos_count), int(stats.neg_count)  # 8 * 1 and 8 * 6 pairs
    (8, 48)
  """
  statistics_fn = functools.partial(
      tcm_statistics, margin_pos=margin_pos, margin_neg=margin_neg)
  return _pairs.sharded_statistics(
      statistics_fn, embeddings, labels, axis_name=axis_name, where=where,
      precision=precision)


@_pairs.sharded_form('tcm_loss')
def sharded_tcm_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    margin_pos: float = 0.9,
    margin_neg: float = 0.5,
    lambda_pos: float = 1.0,
    lambda_neg: float = 1.0,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """TCM loss of the global batch, from inside `jax.shard_map`.

  Value and gradients equal those of `tcm_loss_from_embeddings` on the
  concatenated global batch: the statistics are summed over the mesh before
  dividing, and `all_gather` carries the gradients of the reference columns
  back to the devices that own them. Gradients taken inside `shard_map` need
  its default `check_vma=True`, under which JAX sums the gradients of
  replicated parameters over devices itself (add no `pmean` or `psum`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    margin_pos: see `tcm_loss`.
    margin_neg: see `tcm_loss`.
    lambda_pos: see `tcm_loss`.
    lambda_neg: see `tcm_loss`.
    precision: precision of the similarity's matrix product.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return tcm_loss_from_statistics(
      sharded_tcm_statistics(
          embeddings, labels, axis_name=axis_name, where=where,
          margin_pos=margin_pos, margin_neg=margin_neg, precision=precision),
      lambda_pos=lambda_pos, lambda_neg=lambda_neg)
