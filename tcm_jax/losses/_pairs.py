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

from tcm_jax import _array_checks
from tcm_jax import _checks
from tcm_jax import similarity as similarity_lib


class PairMasks(NamedTuple):
  """`[q, r]` float32 masks: 1.0 for the pairs that take part, else 0.0.

  Float rather than boolean because losses multiply by them (`_greater_than`
  says why).
  """
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
      a device's rows are matched against the references of all devices): an
      integer in `[0, r - q]`, checked when known (a float, or an integer
      outside that range with `exclude_self`, raises). A traced offset (inside
      `jax.jit`) is not checked: query `i` then loses its pair with reference
      `i + query_offset` when that index is in `[0, r)` and keeps all its
      pairs otherwise, so a wrong offset silently keeps self pairs or drops
      real ones.

  Returns:
    `PairMasks` with `[q, r]` float32 `positive` and `negative` masks.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses.advanced import pair_masks
    >>> masks = pair_masks(jnp.zeros((3, 3)), jnp.array([0, 0, 1]))
    >>> print(masks.positive.astype(int))  # float32 1.0/0.0
    [[0 1 0]
     [1 0 0]
     [0 0 0]]
    >>> print(masks.negative.astype(int))
    [[0 0 1]
     [0 0 1]
     [1 1 0]]
  """
  _array_checks.check_similarity(similarity)
  num_queries, num_refs = similarity.shape
  labels = _array_checks.as_labels('labels', labels, num_queries, 'rows')
  offset = _checks.concrete_int('query_offset', query_offset)
  where = None if where is None else jnp.asarray(where)
  _array_checks.check_mask('where', where, num_queries)
  if ref_labels is None:
    if num_queries != num_refs:
      raise ValueError(
          'similarity must be square when ref_labels is None (the queries are '
          f'their own references), got shape {similarity.shape}.')
    if ref_where is not None:
      raise ValueError(
          'ref_where must be None when ref_labels is None: `where` then masks '
          'queries and references alike.')
    ref_where = where
    exclude_self = True if exclude_self is None else exclude_self
  else:
    ref_labels = _array_checks.as_labels('ref_labels', ref_labels, num_refs,
                                             'columns')
    ref_where = None if ref_where is None else jnp.asarray(ref_where)
    _array_checks.check_mask('ref_where', ref_where, num_refs)

  if exclude_self and offset is not None:
    check_query_offset(offset, num_queries, num_refs)

  ranks, ref_ranks = _dense_ranks(labels, ref_labels)
  positive = equal(ranks[:, None], ref_ranks[None, :])
  valid = jnp.ones(similarity.shape, jnp.float32)
  if where is not None:
    valid *= where.astype(jnp.float32)[:, None]
  if ref_where is not None:
    valid *= ref_where.astype(jnp.float32)[None, :]
  if exclude_self:
    rows = jnp.arange(num_queries) + query_offset
    valid *= 1.0 - equal(rows.astype(jnp.float32)[:, None],
                         jnp.arange(num_refs, dtype=jnp.float32)[None, :])
  positive *= valid
  return PairMasks(positive=positive, negative=valid - positive)


def check_query_offset(offset: int, num_queries: int, num_refs: int) -> None:
  """Self pairs at `offset`: the queries are a block of the references.

  Examples:
    >>> from tcm_jax.losses import _pairs
    >>> _pairs.check_query_offset(5, 4, 8)
    Traceback (most recent call last):
    ...
    ValueError: query_offset must be an integer in [0, 4] (the index of the first of the 4 queries among the 8 references), got 5.
  """
  if num_queries > num_refs:
    raise ValueError(
        f'query_offset: with exclude_self=True the {num_queries} queries must '
        f'be a block of the {num_refs} references (their self pairs at '
        f'query_offset), got more queries than references.')
  if not 0 <= offset <= num_refs - num_queries:
    raise ValueError(
        f'query_offset must be an integer in [0, {num_refs - num_queries}] '
        f'(the index of the first of the {num_queries} queries among the '
        f'{num_refs} references), got {offset}.')


def at_most(x: jax.Array, bound) -> jax.Array:
  """`(x <= bound)` as float32 1.0/0.0, built from arithmetic alone."""
  return 1.0 - _greater_than(x, bound)


def at_least(x: jax.Array, bound) -> jax.Array:
  """`(x >= bound)` as float32 1.0/0.0, built from arithmetic alone."""
  return 1.0 - _greater_than(bound, x)


def _greater_than(a, b) -> jax.Array:
  """`(a > b)` as float32 1.0/0.0 for finite inputs; zero gradient.

  Why arithmetic: on XLA:CPU, comparisons and selects over `[q, r]` pair
  matrices compile to scalar loops about ten times slower than the vectorised
  loops that arithmetic fuses into (benchmarks/tcm_loss.py); `max`, `ceil` and
  `min` give the same mask at a fraction of the cost. Exact: a float
  difference is 0 exactly when the two numbers are equal, except for two
  numbers below the smallest normal float (about 1e-38 in float32), whose
  difference XLA:CPU flushes to zero.
  """
  return jnp.minimum(jnp.ceil(jnp.maximum(a - b, 0.0)), 1.0)


def equal(a: jax.Array, b: jax.Array) -> jax.Array:
  """`(a == b)` as float32 1.0/0.0 for integer-valued floats, in arithmetic."""
  return 1.0 - jnp.minimum(jnp.abs(a - b), 1.0)


def _dense_ranks(
    labels: jax.Array,
    ref_labels: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Class ids as their float32 rank among the distinct ids of both arrays.

  Ranks are small integers, exact in float32 (any class ids, up to 2**24
  rows), so that `equal` can compare them. `ref_labels=None` means `labels`.
  """
  if ref_labels is None:
    ranks = _ranks(labels)
    return ranks, ranks
  dtype = _array_checks.common_label_dtype(labels, ref_labels)
  ranks = _ranks(
      jnp.concatenate([labels.astype(dtype), ref_labels.astype(dtype)]))
  return ranks[:labels.shape[0]], ranks[labels.shape[0]:]


def _ranks(ids: jax.Array) -> jax.Array:
  """Rank of each id among the distinct ids, 0-based, as float32."""
  order = jnp.argsort(ids)
  ordered = ids[order]
  starts_new_class = jnp.concatenate(
      [jnp.zeros(1, jnp.int32), (ordered[1:] != ordered[:-1]).astype(jnp.int32)])
  return jnp.zeros(ids.shape, jnp.float32).at[order].set(
      jnp.cumsum(starts_new_class).astype(jnp.float32))


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

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from tcm_jax.losses.advanced import gather_references
    >>> mesh = Mesh(jax.devices(), ('data',))  # any count that divides 8
    >>> def offsets(z, y):
    ...   refs = gather_references(z, y, None, 'data')
    ...   return refs.query_offset[None], refs.labels.shape[0]
    >>> first_rows, num_refs = jax.jit(jax.shard_map(
    ...     offsets, mesh=mesh, in_specs=(P('data'), P('data')),
    ...     out_specs=(P('data'), P())))(jnp.zeros((8, 2)), jnp.arange(8))
    >>> int(first_rows[0]), int(num_refs)
    (0, 8)
  """
  gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)
  return References(
      embeddings=gather(embeddings),
      labels=gather(labels),
      where=None if where is None else gather(where),
      query_offset=jax.lax.axis_index(axis_name) * embeddings.shape[0],
  )


def zero_padded_rows(name: str, embeddings, where):
  """Padded rows set to 0, so that nothing they hold (NaN) reaches a gradient."""
  if where is None or embeddings is None:
    return embeddings
  embeddings, where = jnp.asarray(embeddings), jnp.asarray(where)
  _array_checks.check_mask(name, where, embeddings.shape[0])
  return jnp.where(where[:, None], embeddings, 0)


def similarity_of_embeddings(embeddings, ref_embeddings=None, ref_labels=None,
                             *, where=None, ref_where=None, precision=None):
  """The cosine similarity an embeddings form of a loss scores.

  Padded rows are set to 0 first (`zero_padded_rows`), so that whatever they
  hold (NaN) reaches neither the value nor any gradient; the similarity form
  cannot do this, since the backward pass of a similarity computed outside
  multiplies the padded rows by their zero cotangents (and 0 * NaN is NaN).

  Args:
    embeddings: `[q, dim]` query embeddings.
    ref_embeddings: optional `[r, dim]` reference embeddings (default: the
      queries).
    ref_labels: the references' labels, given exactly when `ref_embeddings`
      is (only checked for that here).
    where: optional `[q]` padding mask of the queries.
    ref_where: optional `[r]` padding mask of the references.
    precision: precision of the matrix product.

  Returns:
    The `[q, r]` similarity.
  """
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError(
        'ref_embeddings and ref_labels must be given together, got '
        f'ref_embeddings={"None" if ref_embeddings is None else "array"} and '
        f'ref_labels={"None" if ref_labels is None else "array"}.')
  embeddings = zero_padded_rows('where', embeddings, where)
  ref_embeddings = zero_padded_rows('ref_where', ref_embeddings, ref_where)
  return similarity_lib.cosine_similarity(embeddings, ref_embeddings,
                                          precision=precision)


def zero_excluded(similarity, masks, exclude_self, query_offset, padded):
  """Zeroes the entries the masks exclude, whatever they hold (NaN, -inf).

  The masks multiply, and 0 * nan is nan: the excluded entries must be
  finite. With padding, one select over all entries; otherwise the self pairs
  alone (a diagonal filled with -inf is a common way to drop them).
  """
  if padded:
    return jnp.where(masks.positive + masks.negative > 0, similarity, 0.0)
  if exclude_self:
    rows = jnp.arange(similarity.shape[0])
    cols = rows + query_offset
    # A negative index would wrap around to the last columns: send it past
    # the end instead, where 'drop' ignores it (as `pair_masks` does).
    cols = jnp.where(cols < 0, similarity.shape[1], cols)
    return similarity.at[rows, cols].set(0.0, mode='drop')
  return similarity


def prepare(similarity, labels, ref_labels=None, *, where=None,
            ref_where=None, exclude_self=None, query_offset=0):
  """What every pair loss starts from: validated masks, safe similarities.

  Returns:
    `(similarity, masks)`: the similarity in at least float32 with every
    entry the masks exclude (self pairs, padding) set to 0, and `PairMasks`.
  """
  similarity = jnp.asarray(similarity)
  masks = pair_masks(
      similarity, labels, ref_labels, where=where, ref_where=ref_where,
      exclude_self=exclude_self, query_offset=query_offset)
  similarity = similarity.astype(
      jnp.promote_types(similarity.dtype, jnp.float32))
  exclude_self = ref_labels is None if exclude_self is None else exclude_self
  similarity = zero_excluded(
      similarity, masks, exclude_self, query_offset,
      padded=where is not None or ref_where is not None)
  return similarity, masks


def nan_if_not_finite(similarity: jax.Array, masks: PairMasks) -> jax.Array:
  """0.0, or NaN when a pair that takes part has a non-finite similarity.

  Added to a loss's sums, so that such a pair surfaces as a NaN loss (the
  trainer's guard stops on it) even where the loss's own mining or masking
  would drop it. `similarity` comes from `prepare` (excluded entries already
  0), and the term has a zero gradient.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import _pairs
    >>> s, masks = _pairs.prepare(jnp.array([[1.0, jnp.inf], [0.5, 1.0]]),
    ...                           jnp.array([0, 1]))
    >>> print(_pairs.nan_if_not_finite(s, masks))
    nan
    >>> s, masks = _pairs.prepare(jnp.array([[jnp.nan, 0.5], [0.5, 1.0]]),
    ...                           jnp.array([0, 1]))  # a self pair: no part
    >>> print(_pairs.nan_if_not_finite(s, masks))
    0.0
  """
  # s - s is 0 for finite s and NaN for NaN and +-inf; XLA keeps it (it does
  # not fold x - x for floats). Out of the gradient: its +1 and -1 would be
  # added to every pair's cotangent and round the small ones away.
  return jax.lax.stop_gradient(
      jnp.sum((masks.positive + masks.negative) * (similarity - similarity)))


def sharded_statistics(statistics_fn, embeddings: jax.Array, labels: jax.Array,
                       *, axis_name, where: jax.Array | None = None,
                       precision: jax.lax.PrecisionLike = None):
  """A loss's statistics over the global batch, from inside `jax.shard_map`.

  Each device scores its own rows (queries) against the all-gathered rows of
  every device (references), with its self pairs at its own row offset; the
  statistics (a pytree of sums and counts) are then summed over the mesh.

  Args:
    statistics_fn: `fn(similarity, labels, ref_labels, *, where, ref_where,
      exclude_self, query_offset)` returning a pytree of sums and counts.
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` integer labels.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    precision: precision of the similarity's matrix product.

  Returns:
    The statistics of the global batch, the same on every device.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from tcm_jax.losses import advanced
    >>> mesh = Mesh(jax.devices(), ('data',))  # any count that divides 8
    >>> z = jax.random.normal(jax.random.key(0), (8, 16))
    >>> stats_fn = jax.jit(jax.shard_map(
    ...     lambda z, y: advanced.sharded_statistics(
    ...         advanced.contrastive_statistics, z, y, axis_name='data'),
    ...     mesh=mesh, in_specs=(P('data'), P('data')), out_specs=P()))
    >>> stats = stats_fn(z, jnp.array([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> int(stats.pos_count), int(stats.neg_count)
    (8, 48)
  """
  embeddings = zero_padded_rows('where', embeddings, where)
  refs = gather_references(embeddings, labels, where, axis_name)
  similarity = similarity_lib.cosine_similarity(
      embeddings, refs.embeddings, precision=precision)
  stats = statistics_fn(
      similarity, labels, refs.labels, where=where, ref_where=refs.where,
      exclude_self=True, query_offset=refs.query_offset)
  # One psum per statistic: JAX 0.7.0 to 0.8.0 cannot transpose a psum that
  # mixes differentiable sums with constant counts.
  return jax.tree.map(lambda x: jax.lax.psum(x, axis_name), stats)


# Elements of the per-query intermediates held at once by `map_queries`.
MAP_CHUNK_ELEMENTS = 2**22


def map_queries(fn, xs, elements_per_query: int):
  """`fn` over the leading (query) axis of `xs`, in vectorised chunks.

  For losses whose per-query work is a `[r, r]`-sized tensor: the chunks are
  rematerialised in the backward pass, so only one chunk's intermediates
  (`MAP_CHUNK_ELEMENTS` elements) are held at a time.
  """
  chunk = max(1, MAP_CHUNK_ELEMENTS // max(elements_per_query, 1))
  return jax.lax.map(jax.checkpoint(fn), xs, batch_size=chunk)


def sharded_form(loss_name: str, *, proxies: bool = False):
  """Decorates `sharded_<loss_name>`: its docstring gains the shared example.

  Every cross-device loss is written the same way: the loss's reduction
  (`<loss>_from_statistics`) of its statistics summed over the mesh. The
  example, checked by doctest, shows that it equals the one-device loss of
  the global batch.
  """

  def decorate(fn):
    if fn.__doc__ is not None:  # None under python -OO
      fn.__doc__ += _sharded_example(loss_name, proxies)
    return fn

  return decorate


def _sharded_example(name: str, proxies: bool) -> str:
  if proxies:
    arrays, specs, one_device = 'z, y, w', "P('data'), P('data'), P()", (
        f'losses.{name}(z, y, w)')
  else:
    arrays, specs, one_device = 'z, y', "P('data'), P('data')", (
        f'losses.{name}(tcm_jax.cosine_similarity(z), y)')
  return f"""
  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> import tcm_jax
    >>> from tcm_jax import losses
    >>> mesh = Mesh(jax.devices(), ('data',))  # any count that divides 8
    >>> z = jax.random.normal(jax.random.key(0), (8, 16))
    >>> w = jax.random.normal(jax.random.key(1), (4, 16))  # proxies
    >>> y = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> global_loss = jax.jit(jax.shard_map(
    ...     lambda {arrays}: losses.sharded_{name}({arrays}, axis_name='data'),
    ...     mesh=mesh, in_specs=({specs}), out_specs=P()))
    >>> one_device = {one_device}
    >>> bool(jnp.allclose(global_loss({arrays}), one_device, rtol=1e-5))
    True
"""
