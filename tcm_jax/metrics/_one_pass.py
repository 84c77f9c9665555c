"""The one-pass evaluation: every metric from one pass over the pairs.

Each block of query rows is compared with all references once. Its pairs go
into per-class histograms of positive and negative distances on a fixed grid
(`_histograms`), and its rows into their nearest neighbours; every threshold
metric is then read off the summed histograms, so that any number of
thresholds, ranges or operating points costs nothing more.

Two ways to run the pass, with the same results:
- `'numpy'` (the default on CPU): the queries and references sorted by
  class, so that each block's rows fall in a few classes and a class's
  positives are one column range; products with NumPy's BLAS in tiles that
  stay in cache; only pairs nearer than the cut are binned (`np.bincount`),
  the rest are counted from the class sizes; the nearest neighbours are
  found among the chunks of 32 references whose largest similarity reaches
  a row's `depth`-th largest chunk maximum (they hold every one of its
  `depth` nearest), then sorted exactly, ties by reference index.
- `'jax'` (the default on accelerators): one jit-compiled kernel per block on
  the device, the histograms a scatter-add carried on the device, the
  neighbours `lax.top_k`.

The cut is chosen before the pass from a sample of 256 query rows, past the
distance where the global FAR reaches the largest the evaluation reads
(with margin); in the rare case the whole set reaches it farther, the pass
is run again with no cut, so the results never depend on the sample.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import _retrieval
from tcm_jax.similarity import l2_normalize

# The NumPy pass's tiles: 64 query rows x 4096 references (a multiple of the
# chunk), 1 MiB of float32, near the cache for the passes that follow its
# product (benchmarks/metrics.py measured the shapes).
TILE_COLUMNS = 4096
TILE_ROWS = 64
CHUNK = 32
MAX_WORKERS = 8
KEYS_AT_ONCE = 2**22  # binned pairs a worker holds before counting them
SAMPLE_ROWS = 256


@dataclasses.dataclass(frozen=True)
class PassResult:
  """What one pass leaves: the histograms and the retrieval sums."""
  histograms: _histograms.PairHistograms
  sums: np.ndarray  # [len(ks) + 3] float64
  class_sums: np.ndarray  # [classes, len(ks) + 3] float64


def pair_totals(source: _pair_counts.PairSource) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """`([classes], [classes])` int64 positive and negative pairs of each
  query class."""
  queries = np.bincount(source.query_ids, minlength=source.num_classes)
  refs = np.bincount(source.ref_ids, minlength=source.num_classes)
  positives = queries * (refs - int(source.exclude_self))
  return positives.astype(np.int64), (queries * (source.num_refs - refs)
                                      ).astype(np.int64)


def count_dtype(source: _pair_counts.PairSource) -> type:
  """int32 where every class's pairs fit in it, else int64."""
  positives, negatives = pair_totals(source)
  return np.int32 if max(positives.max(), negatives.max()) < 2**31 else (
      np.int64)


# Histograms past this size are refused before the pass.
MAX_HISTOGRAM_BYTES = 4 * 2**30


def check_histogram_size(source: _pair_counts.PairSource, cut_bin: int, *,
                         redone: bool = False) -> None:
  """Raises when `classes x bins x 2` counters would not fit in memory
  (`redone`: for the pass without a cut, after the sample's fell short)."""
  size = (2 * source.num_classes * (cut_bin + 2)
          * np.dtype(count_dtype(source)).itemsize)
  if size > MAX_HISTOGRAM_BYTES:
    why = ('the histograms without a cut (the sampled rows put the cut '
           'short of where the whole set reaches the FAR asked)' if redone
           else 'the histograms')
    advice = ('' if redone else
              ', or a smaller far_range upper end (the bins stop past it)')
    raise ValueError(
        f"engine='histogram' needs {size / 2**30:.1f} GiB for {why} of "
        f'{source.num_classes} classes x {cut_bin + 2} distance bins (more '
        f'than {MAX_HISTOGRAM_BYTES / 2**30:g} GiB): pass engine=\'exact\' '
        f'(two passes, memory classes x thresholds){advice}.')


def _with_overflow(positive, negative, source) -> _histograms.PairHistograms:
  """The last column of both recounted from the class totals (the pairs
  past the cut), in place."""
  pos_total, neg_total = pair_totals(source)
  for histogram, total in ((positive, pos_total), (negative, neg_total)):
    histogram[:, -1] = total - histogram[:, :-1].sum(axis=1, dtype=np.int64)
  return _histograms.PairHistograms(positive, negative,
                                    positive.shape[1] - 2)


# One compiled program (eager, its dozen operations compile one by one: a
# second in a fresh process).
_l2_normalize = jax.jit(l2_normalize)


def _normalized(x) -> np.ndarray:
  return np.asarray(_l2_normalize(jnp.asarray(x)), np.float32)


class _Rows:
  """Similarity rows of the source, by original query index (NumPy)."""

  def __init__(self, source: _pair_counts.PairSource, ref_order=None):
    self._order = ref_order
    if source.similarity is not None:
      self._matrix = np.asarray(source.similarity, np.float32)
      self._queries = self._refs = None
    else:
      self._matrix = None
      self._queries = _normalized(source.embeddings)
      self._refs = (self._queries if source.ref_embeddings is None
                    else _normalized(source.ref_embeddings))
      if ref_order is not None:
        self._refs = self._refs[ref_order]

  def queries(self, index: np.ndarray) -> np.ndarray:
    """Query embeddings (or similarity rows, columns in reference order)."""
    if self._matrix is not None:
      rows = self._matrix[index]
      return rows if self._order is None else rows[:, self._order]
    return self._queries[index]

  def tile(self, queries: np.ndarray, start: int, stop: int,
           out: np.ndarray) -> None:
    """`out[:, :stop - start]` = the similarities of references
    `start..stop` (in reference order)."""
    width = stop - start
    if self._matrix is not None:
      out[:, :width] = queries[:, start:stop]
    elif width == out.shape[1]:
      np.dot(queries, self._refs[start:stop].T, out=out)
    else:
      out[:, :width] = queries @ self._refs[start:stop].T


def choose_cut(source: _pair_counts.PairSource, far: float,
               distance: float | None) -> int:
  """The histograms' cut: 64 bins past where the global FAR reaches
  `1.25 far + 0.01` on a sample of `SAMPLE_ROWS` query rows, and past
  `distance`; no cut (`LAST_BIN`) when that FAR is 1 or more (`far` above
  0.792: a cut at the
  sample's farthest negative would nearly always fall short)."""
  wanted = 1.25 * far + 0.01
  if wanted >= 1.0:
    return _histograms.LAST_BIN
  rng = np.random.default_rng(0)
  count = min(source.num_queries, SAMPLE_ROWS)
  index = np.sort(rng.choice(source.num_queries, count, replace=False))
  rows = _Rows(source)
  histogram = np.zeros(_histograms.LAST_BIN + 2, np.int64)
  rows_at_once = 16  # about 16 x R similarities held at a time
  similarity = np.empty((rows_at_once, source.num_refs), np.float32)
  for first in range(0, count, rows_at_once):
    part = index[first:first + rows_at_once]
    block = similarity[:len(part)]
    rows.tile(rows.queries(part), 0, source.num_refs, block)
    negative = source.query_ids[part][:, None] != source.ref_ids[None, :]
    histogram += np.bincount(
        _histograms.distance_bins(block[negative], _histograms.LAST_BIN),
        minlength=len(histogram))
  cut = _histograms.LAST_BIN
  if histogram.sum():
    cumulative = np.cumsum(histogram)
    cut = int(np.searchsorted(cumulative, wanted * cumulative[-1])) + 64
  if distance is not None:
    cut = max(cut, _histograms.edge_bin(distance) + 1)
  return min(cut, _histograms.LAST_BIN)


def _class_starts(ids: np.ndarray, num_classes: int) -> np.ndarray:
  """`[classes + 1]` where each class starts in `ids` sorted."""
  return np.concatenate([[0], np.cumsum(np.bincount(ids,
                                                    minlength=num_classes))])


def _per_query_sums(relevant: np.ndarray, num_relevant: np.ndarray,
                    ks: Sequence[int]) -> np.ndarray:
  """`[b, len(ks) + 3]` hits at each K, AP@R, R-precision and 1, for rows of
  neighbours in rank order (`relevant`: `[b, depth]` bool)."""
  depth = relevant.shape[1]
  hits = np.cumsum(relevant, axis=1)
  ranks = np.arange(1, depth + 1)
  r = num_relevant
  safe_r = np.maximum(r, 1)
  within_r = ranks[None, :] <= r[:, None]
  average_precision = np.sum(np.where(relevant & within_r, hits / ranks, 0.0),
                             axis=1) / safe_r
  r_index = np.clip(r - 1, 0, depth - 1)
  r_precision = hits[np.arange(len(r)), r_index] / safe_r
  recall = [hits[:, min(k, depth) - 1] > 0 for k in ks]
  per_query = np.stack(recall + [average_precision, r_precision,
                                 np.ones_like(r_precision)], axis=1)
  return np.where((r > 0)[:, None], per_query, 0.0)


def chunk_maxima(tile: np.ndarray) -> np.ndarray:
  """`[b, columns / CHUNK]` the largest similarity of each chunk of a tile.

  Chunk `j` of a tile of `columns` holds the columns `j + k * (columns /
  CHUNK)`, `k < CHUNK`: strided, so that the maximum is an elementwise one
  over `CHUNK` slices (vectorised), not a reduction along each short row.
  """
  rows, columns = tile.shape
  return tile.reshape(rows, CHUNK, columns // CHUNK).max(axis=1)


def _nearest(chunk_max, tiles, depth, ref_order, num_refs):
  """`[b, depth]` sorted-reference positions of each row's nearest.

  `chunk_max` `[b, tiles * chunks]` holds the largest similarity of each
  chunk (`chunk_maxima`) of each tile of `tiles` `[tiles, rows, columns]`
  (contiguous; its first `b` rows are the block's). A
  row's `depth` nearest all lie in chunks whose maximum reaches its
  `depth`-th largest chunk maximum `tau` (those `depth` maxima are `depth`
  similarities at least `tau`), and have similarity at least `tau`: those
  candidates are sorted by similarity, then reference index.
  """
  rows, chunks = chunk_max.shape
  if depth < chunks:
    tau = np.partition(chunk_max, chunks - depth, axis=1)[:, chunks - depth]
  else:
    tau = np.full(rows, -np.inf, np.float32)
  num_tiles, tile_rows, columns_per_tile = tiles.shape
  per_tile = columns_per_tile // CHUNK
  row, chunk = np.nonzero(chunk_max >= tau[:, None])
  tile, local = np.divmod(chunk, per_tile)
  local = local[:, None] + np.arange(CHUNK) * per_tile
  # One flat gather (`take`): several times faster than a 3-D fancy index.
  flat = (tile * tile_rows + row)[:, None] * columns_per_tile + local
  values = tiles.reshape(num_tiles * tile_rows * columns_per_tile).take(flat)
  columns = tile[:, None] * columns_per_tile + local
  keep = values >= tau[row][:, None]
  row = np.broadcast_to(row[:, None], values.shape)[keep]
  values, columns = values[keep], columns[keep]
  # Padding columns (past the references) sort after every reference.
  index = np.where(columns < num_refs,
                   ref_order[np.minimum(columns, num_refs - 1)],
                   num_refs + columns)
  order = np.lexsort((index, -values, row))
  row, columns = row[order], columns[order]
  starts = np.searchsorted(row, np.arange(rows))
  rank = np.arange(len(row)) - starts[row]
  take = rank < depth
  nearest = np.full((rows, depth), num_refs, np.int64)
  nearest[row[take], rank[take]] = columns[take]
  return nearest


@dataclasses.dataclass
class _NumpyPass:
  """The queries and references sorted by class, the tile shape, and the
  counts that the workers add to (under `lock`)."""
  source: _pair_counts.PairSource
  plan: _retrieval.RetrievalPlan
  cut_bin: int

  def __post_init__(self):
    source = self.source
    self.query_order = np.argsort(source.query_ids, kind='stable')
    self.ref_order = (self.query_order if source.exclude_self
                      else np.argsort(source.ref_ids, kind='stable'))
    self.query_ids = source.query_ids[self.query_order]
    self.ref_ids = np.append(source.ref_ids[self.ref_order], -1)  # padding
    self.query_starts = _class_starts(source.query_ids, source.num_classes)
    self.ref_starts = _class_starts(source.ref_ids, source.num_classes)
    self.num_relevant = self.plan.num_relevant[:source.num_queries][
        self.query_order]
    self.rows = _Rows(source, self.ref_order)
    self.columns = min(TILE_COLUMNS, -(-source.num_refs // CHUNK) * CHUNK)
    self.num_tiles = -(-source.num_refs // self.columns)
    self.block_rows = min(TILE_ROWS, source.num_queries)
    self.mask = _histograms.mask_similarity(self.cut_bin)
    width = self.cut_bin + 2
    dtype = count_dtype(source)
    self.every = np.zeros((source.num_classes, width), dtype)
    self.positive = np.zeros((source.num_classes, width), dtype)
    self.sums = np.zeros(len(self.plan.ks) + 3, np.float64)
    self.class_sums = np.zeros((source.num_classes, len(self.sums)),
                               np.float64)
    self.lock = threading.Lock()

  def _keys(self, values: np.ndarray, row: int) -> np.ndarray:
    """The bins of the pairs of `values` within the cut, offset to row
    `row` of the block's `[rows, cut_bin + 2]` counts."""
    # compress is branch-free: boolean indexing runs ten times slower here.
    values = np.compress((values >= self.mask).ravel(), values.ravel())
    keys = _histograms.distance_bins(values, self.cut_bin)
    keys += row * (self.cut_bin + 2)
    return keys

  def block(self, index: int, tiles: np.ndarray, chunk_max: np.ndarray):
    """Counts and ranks query rows `index * block_rows` onwards, in the
    worker's own `tiles` and `chunk_max` buffers."""
    source, columns = self.source, self.columns
    start = index * self.block_rows
    stop = min(start + self.block_rows, source.num_queries)
    valid = stop - start
    queries = self.rows.queries(self.query_order[start:stop])
    block_ids = self.query_ids[start:stop]
    classes = np.unique(block_ids)
    # Rows: each class's pairs, then each class's positives. Keys are
    # counted every `KEYS_AT_ONCE`, so that a block holds few whatever R.
    counts = np.zeros(2 * len(classes) * (self.cut_bin + 2), np.int64)
    keys, held = [], 0
    per_tile = columns // CHUNK
    for t in range(self.num_tiles):
      tile = tiles[t, :valid]
      first = t * columns
      last = min(first + columns, source.num_refs)
      self.rows.tile(queries, first, last, tile)
      tile[:, last - first:] = -np.inf
      if source.exclude_self:
        diagonal = np.arange(max(start, first), min(stop, last))
        tile[diagonal - start, diagonal - first] = -np.inf
      for row, c in enumerate(classes):
        r0 = max(self.query_starts[c] - start, 0)
        r1 = min(self.query_starts[c + 1] - start, valid)
        keys.append(self._keys(tile[r0:r1], row))
        held += len(keys[-1])
        p0 = max(self.ref_starts[c], first) - first
        p1 = min(self.ref_starts[c + 1], last) - first
        if p1 > p0:
          keys.append(self._keys(tile[r0:r1, p0:p1], len(classes) + row))
          held += len(keys[-1])
      if held > KEYS_AT_ONCE:
        counts += np.bincount(np.concatenate(keys), minlength=len(counts))
        keys, held = [], 0
      chunk_max[:valid, t * per_tile:(t + 1) * per_tile] = chunk_maxima(tile)
    nearest = _nearest(chunk_max[:valid], tiles,
                       self.plan.num_neighbours, self.ref_order,
                       source.num_refs)
    relevant = self.ref_ids[nearest] == block_ids[:, None]
    per_query = _per_query_sums(relevant, self.num_relevant[start:stop],
                                self.plan.ks)
    # Counted per block, not per class and tile (each a classes' worth of
    # bins to clear and add).
    if keys:
      counts += np.bincount(np.concatenate(keys), minlength=len(counts))
    counts = counts.reshape(2, len(classes), self.cut_bin + 2)
    with self.lock:
      self.every[classes] += counts[0]
      self.positive[classes] += counts[1]
      self.sums += per_query.sum(axis=0)
      np.add.at(self.class_sums, block_ids, per_query)

  def buffers(self) -> tuple[np.ndarray, np.ndarray]:
    """One worker's tiles (`[tiles, rows, columns]`) and chunk maxima."""
    return (np.empty((self.num_tiles, self.block_rows, self.columns),
                     np.float32),
            np.empty((self.block_rows,
                      self.num_tiles * (self.columns // CHUNK)), np.float32))


def _workers() -> int:
  try:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))
  except AttributeError:  # not on Linux
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def numpy_pass(source: _pair_counts.PairSource,
               plan: _retrieval.RetrievalPlan, cut_bin: int,
               progress=None, workers: int | None = None) -> PassResult:
  """The one pass with NumPy (see the module docstring).

  With more than one worker (default: one per core, at most `MAX_WORKERS`),
  each takes every `workers`-th block in a thread of its own, with BLAS held
  to one thread (`threadpoolctl`): NumPy releases the GIL in its products
  and elementwise passes, so the binning of one block runs beside the
  products of another.
  """
  state = _NumpyPass(source, plan, cut_bin)
  num_blocks = -(-source.num_queries // state.block_rows)
  workers = min(workers or _workers(), num_blocks)
  done = [0]
  stop = threading.Event()  # a failure or Ctrl-C: the others stop too

  def work(first: int) -> None:
    try:
      tiles, chunk_max = state.buffers()
      for index in range(first, num_blocks, workers):
        if stop.is_set():
          return
        state.block(index, tiles, chunk_max)
        if progress is not None:
          with state.lock:
            done[0] += 1
            progress(done[0], num_blocks)
    except BaseException:
      stop.set()
      raise

  if workers == 1:
    work(0)
  else:
    import threadpoolctl  # pylint: disable=import-outside-toplevel
    with threadpoolctl.threadpool_limits(1, user_api='blas'):
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(work, w) for w in range(workers)]
        try:
          for future in futures:
            future.result()
        except BaseException:  # Ctrl-C waits for one block, not the pass
          stop.set()
          raise
  negative = state.every
  negative -= state.positive  # int32 wraps back: exact
  return PassResult(_with_overflow(state.positive, negative, source),
                    state.sums, state.class_sums)


@functools.partial(
    jax.jit, donate_argnums=(0,),
    static_argnames=('num_neighbours', 'ks', 'exclude_self', 'num_classes',
                     'cut_bin'))
def _device_block(histogram, queries, refs, query_ids, ref_ids, row_valid,
                  offset, num_relevant, *, num_neighbours, ks, exclude_self,
                  num_classes, cut_bin):
  """One block on the device: its pairs scattered into the histograms
  (`[classes * 2 * (cut_bin + 2)]` int32: negative, positive), its ranking
  sums."""
  similarity = _pair_counts.block_similarity(queries, refs)
  distance = 1.0 - similarity
  bins = jnp.clip(jnp.ceil(distance * _histograms.BINS_PER_UNIT), 0,
                  cut_bin + 1).astype(jnp.int32)
  positive = query_ids[:, None] == ref_ids[None, :]
  valid = row_valid[:, None] & jnp.ones(distance.shape, bool)
  if exclude_self:
    valid &= ~_pair_counts.self_pair_mask(distance.shape, offset)
  key = (query_ids[:, None] * 2 + positive) * (cut_bin + 2) + bins
  key = jnp.where(valid, key, histogram.shape[0])  # dropped below
  histogram = histogram.at[key.ravel()].add(1, mode='drop')
  sums = _retrieval.ranking_sums(
      similarity, query_ids, ref_ids, row_valid, offset, num_relevant,
      num_neighbours=num_neighbours, ks=ks, exclude_self=exclude_self,
      num_classes=num_classes)
  return histogram, sums


def jax_pass(source: _pair_counts.PairSource, plan: _retrieval.RetrievalPlan,
             cut_bin: int, progress=None) -> PassResult:
  """The one pass as a jit-compiled kernel per block (see the module
  docstring)."""
  if count_dtype(source) != np.int32:
    raise ValueError(
        "product='jax' counts in int32 and a class has 2**31 pairs or more: "
        "use product='numpy'.")
  width = cut_bin + 2
  histogram = jnp.zeros(source.num_classes * 2 * width, jnp.int32)
  ref_ids = jnp.asarray(source.ref_ids)
  sums = np.zeros(len(plan.ks) + 3, np.float64)
  class_sums = np.zeros((source.num_classes, len(sums)), np.float64)
  for block in _pair_counts.blocks(source, progress):
    histogram, (block_sums, block_class_sums) = _device_block(
        histogram, block.queries, block.refs, block.query_ids, ref_ids,
        block.row_valid, block.offset, plan.block_relevant(block),
        num_neighbours=plan.num_neighbours, ks=plan.ks,
        exclude_self=source.exclude_self, num_classes=source.num_classes,
        cut_bin=cut_bin)
    sums += np.asarray(block_sums, np.float64)
    class_sums += np.asarray(block_class_sums, np.float64)
  # The last column recounted on the device, then one copy to the host.
  pos_total, neg_total = pair_totals(source)
  counts = histogram.reshape(source.num_classes, 2, width)
  totals = jnp.asarray(np.stack([neg_total, pos_total], axis=1), jnp.int32)
  counts = counts.at[:, :, -1].set(totals - counts[:, :, :-1].sum(axis=2))
  del histogram
  counts = np.asarray(counts)
  return PassResult(_histograms.PairHistograms(counts[:, 1], counts[:, 0],
                                               cut_bin), sums, class_sums)
