"""Which entries of a (Q, R) similarity matrix are positive or negative pairs.

Shared by every pair-based loss: labels decide positive (same class) versus
negative (different class); padding masks and self pairs decide which entries
take part at all. The same code serves one device (queries are the references,
self pairs on the diagonal) and the cross-device form (this device's queries
against all devices' references, self pairs at this device's row offset).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tcm_jax.losses import _validation


class PairMasks(NamedTuple):
  """Boolean `[q, r]` masks of the pairs that take part in a loss."""
  positive: jax.Array
  negative: jax.Array


class References(NamedTuple):
  """Every device's rows, gathered onto each device inside `shard_map`."""
  embeddings: jax.Array
  labels: jax.Array
  where: jax.Array | None
  query_offset: jax.Array


def pair_masks(
    similarity: jax.Array,
    labels: jax.typing.ArrayLike,
    ref_labels: jax.typing.ArrayLike | None = None,
    *,
    where: jax.typing.ArrayLike | None = None,
    ref_where: jax.typing.ArrayLike | None = None,
    exclude_self: bool | None = None,
    query_offset: jax.typing.ArrayLike = 0,
) -> PairMasks:
  """Validates a similarity matrix with its labels and returns its pair masks.

  Args:
    similarity: `[q, r]` similarity matrix (only its shape and dtype are read).
    labels: `[q]` integer class ids of the queries.
    ref_labels: `[r]` integer class ids of the references; defaults to
      `labels`, the queries being their own references (then `q == r`).
    where: optional `[q]` boolean mask, False for padded queries.
    ref_where: optional `[r]` boolean mask, False for padded references. With
      `ref_labels=None` the references are the queries, so `where` masks both
      sides and `ref_where` must be None.
    exclude_self: drop the pairs of a sample with itself, i.e. query `i`
      against reference `i + query_offset`. Defaults to `ref_labels is None`.
    query_offset: index of the first query among the references (non-zero when
      a device's rows are matched against the references of all devices).

  Returns:
    `PairMasks` with `[q, r]` boolean `positive` and `negative` masks.
  """
  _validation.check_similarity(similarity)
  num_queries, num_refs = similarity.shape
  labels = jnp.asarray(labels)
  _validation.check_labels('labels', labels, num_queries, 'rows')
  where = None if where is None else jnp.asarray(where)
  _validation.check_mask('where', where, num_queries)
  if ref_labels is None:
    if num_queries != num_refs:
      raise ValueError(
          'similarity must be square when ref_labels is None (the queries are '
          f'their own references), got shape {similarity.shape}.')
    if ref_where is not None:
      raise ValueError(
          'ref_where must be None when ref_labels is None: `where` then masks '
          'queries and references alike.')
    ref_labels, ref_where = labels, where
    exclude_self = True if exclude_self is None else exclude_self
  ref_labels = jnp.asarray(ref_labels)
  _validation.check_labels('ref_labels', ref_labels, num_refs, 'columns')
  ref_where = None if ref_where is None else jnp.asarray(ref_where)
  _validation.check_mask('ref_where', ref_where, num_refs)

  same_class = labels[:, None] == ref_labels[None, :]
  valid = jnp.ones(similarity.shape, dtype=bool)
  if where is not None:
    valid &= where[:, None]
  if ref_where is not None:
    valid &= ref_where[None, :]
  if exclude_self:
    rows = jnp.arange(num_queries)[:, None] + query_offset
    valid &= rows != jnp.arange(num_refs)[None, :]
  return PairMasks(positive=same_class & valid, negative=~same_class & valid)


def gather_references(
    embeddings: jax.Array,
    labels: jax.Array,
    where: jax.Array | None,
    axis_name,
) -> References:
  """All-gathers a device's rows inside `shard_map` (differentiably).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` labels.
    where: this device's optional `[b]` padding mask.
    axis_name: the mesh axis (or tuple of axes) the batch is sharded over.

  Returns:
    `References`: the `[n * b, ...]` arrays of all `n` devices in device
    order, and the index of this device's first row among them.
  """
  gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)
  return References(
      embeddings=gather(embeddings),
      labels=gather(labels),
      where=None if where is None else gather(where),
      query_offset=jax.lax.axis_index(axis_name) * embeddings.shape[0],
  )
