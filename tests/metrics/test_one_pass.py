"""The one-pass evaluation (`engine='histogram'`) against the references.

Counts are compared exactly at the engine's thresholds (grid edges) with the
NumPy reference and with the two-pass engine, on the same similarities.
"""

import math
import threading

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

import tcm_jax
from tcm_jax import metrics
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _one_pass
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import advanced
from tests.metrics import reference
from tests.metrics.conftest import clustered_set

G = 2**14


@pytest.fixture
def small_tiles(monkeypatch):
  """Tiles of 64 rows and 256 columns: many tiles, chunks and blocks."""
  monkeypatch.setattr(_one_pass, 'TILE_ROWS', 64)
  monkeypatch.setattr(_one_pass, 'TILE_COLUMNS', 256)


def _set(seed=3, num=420, dim=12, spread=1.0):
  sizes = np.random.default_rng(seed).integers(2, 30, size=60)
  sizes[:2] = 1  # two singleton classes
  sizes = sizes[np.cumsum(sizes) <= num]
  return clustered_set(seed, sizes, dim=dim, spread=spread)


def _matrix(z, y=None):
  return np.asarray(tcm_jax.cosine_similarity(
      z, y, precision=jax.lax.Precision.HIGHEST))


def _check_against_reference(result, similarity, labels, ref_labels=None,
                             ks=(1, 2, 4, 8)):
  """Every number of `result` from the NumPy reference, on `similarity`."""
  thresholds = result.curves.thresholds
  # The thresholds are grid edges, in the range they were read from.
  np.testing.assert_array_equal(thresholds * G, np.round(thresholds * G))
  classes, tpr, tnr = reference.class_rates(similarity, labels, ref_labels,
                                            thresholds)
  np.testing.assert_array_equal(result.curves.classes, classes)
  # Equal counts: rates within rounding (one pair moves a rate by 1e-5 or
  # more here).
  np.testing.assert_allclose(result.curves.tpr, tpr, rtol=0, atol=1e-12)
  np.testing.assert_allclose(result.curves.tnr, tnr, rtol=0, atol=1e-12)
  curves = reference.utility(tpr, tnr)
  assert result.opis == pytest.approx(reference.opis(curves), rel=1e-6)
  assert result.eps_opis == pytest.approx(reference.eps_opis(curves, 0.1),
                                          rel=1e-6)  # float32 on device
  recall, map_r, r_prec, excluded = reference.retrieval(
      similarity, labels, ks, ref_labels)
  assert result.retrieval.recall_at_k == pytest.approx(recall, abs=1e-12)
  # Per-query averages in float32 on a device, float64 in NumPy.
  assert result.retrieval.map_at_r == pytest.approx(map_r, abs=1e-6)
  assert result.retrieval.r_precision == pytest.approx(r_prec, abs=1e-6)
  assert result.retrieval.num_excluded_queries == excluded
  negatives = reference.negative_distances(similarity, labels, ref_labels)
  # The range's ends and the global threshold: the first grid edges at
  # which the exact FAR reaches the rates asked for.
  edges = [*result.curves.calibration_range.distance,
           result.calibration.threshold]
  for edge, far in zip(edges, (1e-3, 1e-1, 1e-2)):
    needed = math.ceil(round(far * len(negatives), 9))
    assert np.sum(negatives <= edge) >= needed
    assert np.sum(negatives <= edge - 1 / G) < needed
    assert edge - reference.far_quantile(similarity, labels, far,
                                         ref_labels) < 1 / G
  assert result.calibration.far == pytest.approx(
      np.mean(negatives <= result.calibration.threshold), abs=1e-12)


@pytest.mark.parametrize('product, block_size', [('numpy', None),
                                                 ('jax', None), ('jax', 64)])
def test_a_similarity_matrix_equals_the_reference(product, block_size,
                                                  small_tiles):
  z, labels = _set()
  assert len(labels) % 64  # a last block of padding rows
  similarity = _matrix(z)
  result = metrics.evaluate_similarity(similarity, labels, engine='histogram',
                                       product=product, block_size=block_size)
  _check_against_reference(result, similarity, labels)
  assert len(result.excluded_classes) == 2


def test_embeddings_on_the_device_equal_the_reference():
  z, labels = _set(seed=4)
  result = metrics.evaluate_embeddings(z, labels, engine='histogram',
                                       product='jax', block_size=72)
  _check_against_reference(result, _matrix(z), labels)  # the same products


def test_embeddings_in_numpy_equal_the_reference_but_for_rounding(
    small_tiles):
  z, labels = _set(seed=4)
  result = metrics.evaluate_embeddings(z, labels, engine='histogram',
                                       product='numpy')
  zn = _one_pass._normalized(z)
  similarity = zn @ zn.T
  # BLAS may round a product of tile shape otherwise than the whole matrix's
  # (not OpenBLAS here): a pair within an ulp of a grid edge may move.
  classes, tpr, tnr = reference.class_rates(similarity, labels, None,
                                            result.curves.thresholds)
  np.testing.assert_array_equal(result.curves.classes, classes)
  for got, want in ((result.curves.tpr, tpr), (result.curves.tnr, tnr)):
    assert np.sum(np.abs(got - want) > 1e-12) <= 4
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
  recall, map_r, _, _ = reference.retrieval(similarity, labels, (1, 2, 4, 8))
  assert result.retrieval.recall_at_k == pytest.approx(recall, abs=2e-3)
  assert result.retrieval.map_at_r == pytest.approx(map_r, abs=2e-3)


@pytest.mark.parametrize('product', ['numpy', 'jax'])
def test_queries_against_other_references(product, small_tiles):
  z, labels = _set(seed=5, num=450)
  queries, refs = z[:250], z[250:]
  query_labels, ref_labels = labels[:250], labels[250:]
  similarity = _matrix(queries, refs)
  result = metrics.evaluate_similarity(similarity, query_labels, ref_labels,
                                       engine='histogram', product=product)
  _check_against_reference(result, similarity, query_labels, ref_labels)


def test_the_two_engines_count_alike_at_the_grid_edges():
  z, labels = _set(seed=6, num=600)
  similarity = _matrix(z)
  source = advanced.source_from_similarity(similarity, labels)
  one = advanced.evaluate_source(source, engine='histogram', ks=(1, 3))
  exact = advanced.class_counts(source, one.curves.thresholds,
                                one.calibration.threshold)
  two = advanced.evaluate_source(source, ks=(1, 3))
  mask = _pair_counts.check_enough_classes(source)
  pos_total = exact.pos_total[mask][:, None]
  np.testing.assert_array_equal(one.curves.tpr,
                                exact.pos_accepted[mask] / pos_total)
  np.testing.assert_array_equal(
      one.calibration.class_frr,
      1 - exact.pos_accepted_extra[mask] / exact.pos_total[mask])
  assert one.retrieval.recall_at_k == two.retrieval.recall_at_k
  np.testing.assert_allclose(one.retrieval.class_sums,
                             two.retrieval.class_sums, atol=1e-5)
  # Thresholds moved by at most half a bin from the exact engine's, whose
  # range ends are within a bin of the same quantiles.
  np.testing.assert_allclose(one.curves.thresholds, two.curves.thresholds,
                             atol=2.5 / G)
  assert one.opis == pytest.approx(two.opis, rel=0.05)


def test_ties_are_ranked_by_reference_index(small_tiles):
  # Embeddings on a coarse lattice: many exactly equal similarities, and
  # duplicates of one another across classes.
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 25, 400)
  z = rng.integers(-1, 2, size=(400, 4)).astype(np.float32)
  z[np.all(z == 0, axis=1)] = 1.0
  similarity = _matrix(z)
  result = metrics.evaluate_similarity(similarity, labels, engine='histogram',
                                       distance_range=(0.2, 0.9), ks=(1, 5))
  recall, map_r, r_prec, _ = reference.retrieval(similarity, labels, (1, 5))
  assert result.retrieval.recall_at_k == pytest.approx(recall, abs=1e-12)
  assert result.retrieval.map_at_r == pytest.approx(map_r, abs=1e-9)
  assert result.retrieval.r_precision == pytest.approx(r_prec, abs=1e-9)


def test_a_cut_too_near_is_redone_without_one(monkeypatch):
  z, labels = _set(seed=8)
  expected = metrics.evaluate_embeddings(z, labels, engine='histogram')
  cuts = []
  real_pass = _one_pass.numpy_pass

  def spy(source, plan, cut_bin, progress=None):
    cuts.append(cut_bin)
    return real_pass(source, plan, cut_bin, progress)

  monkeypatch.setattr(_one_pass, 'choose_cut', lambda *args: G // 4)
  monkeypatch.setattr(_one_pass, 'numpy_pass', spy)
  got = metrics.evaluate_embeddings(z, labels, engine='histogram')
  assert cuts == [G // 4, _histograms.LAST_BIN]
  np.testing.assert_array_equal(got.curves.utility, expected.curves.utility)
  assert got.calibration.threshold == expected.calibration.threshold


def test_the_cut_covers_an_explicit_range_and_the_far_asked():
  z, labels = _set(seed=9)
  source = advanced.source_from_embeddings(z, labels)
  assert _one_pass.choose_cut(source, 0.1, 1.5) >= 1.5 * G
  cut = _one_pass.choose_cut(source, 0.1, None)
  negatives = reference.negative_distances(_matrix(z), labels)
  # Past the FAR asked on the whole set, and near the sample's FAR 0.135:
  # the cut cuts.
  assert np.mean(negatives <= cut / G) > 0.1
  assert 0.12 < np.mean(negatives <= cut / G) < 0.16
  assert cut < _histograms.LAST_BIN / 2
  # A FAR so large that only the sample's farthest negative would do: no cut.
  assert _one_pass.choose_cut(source, 0.8, None) == _histograms.LAST_BIN


def test_one_pass_when_the_sample_does_not_mislead(monkeypatch):
  z, labels = _set(seed=9)
  cuts = []
  real_pass = _one_pass.numpy_pass
  monkeypatch.setattr(_one_pass, 'numpy_pass', lambda source, plan, cut, *a:
                      cuts.append(cut) or real_pass(source, plan, cut, *a))
  metrics.evaluate_embeddings(z, labels, engine='histogram')
  assert len(cuts) == 1 and cuts[0] < _histograms.LAST_BIN / 2


def test_histograms_add_up_over_disjoint_rows():
  z, labels = _set(seed=10)
  similarity = _matrix(z)
  whole = advanced.source_from_similarity(similarity, labels)
  plan = advanced_plan = metrics._retrieval.plan(whole, (1,))
  del advanced_plan
  full = _one_pass.numpy_pass(whole, plan, 20000).histograms
  halves = []
  for rows in (slice(0, 300), slice(300, None)):
    part = advanced.source_from_similarity(similarity[rows], labels[rows],
                                           labels)
    halves.append(_one_pass.numpy_pass(
        part, metrics._retrieval.plan(part, (1,)), 20000).histograms)
  # The halves' own rows pair with every reference, self pairs included as
  # positives; remove them from the merged positives to compare.
  merged = halves[0].merge(halves[1])
  np.testing.assert_array_equal(merged.negative, full.negative)
  self_bins = _histograms.distance_bins(np.diag(similarity), 20000)
  ids = np.unique(labels, return_inverse=True)[1]
  np.add.at(merged.positive, (ids, self_bins), -1)
  np.testing.assert_array_equal(merged.positive, full.positive)
  with pytest.raises(ValueError, match='same classes and cut'):
    full.merge(_histograms.PairHistograms(full.positive, full.negative, 10))


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.floats(-1.0099999904632568, 1.0099999904632568, width=32))
def test_a_pair_is_in_the_bin_of_the_edges_around_its_distance(s):
  cut = _histograms.LAST_BIN
  (k,) = _histograms.distance_bins(np.float32([s]), cut)
  d = np.float32(1) - np.float32(s)
  if k == 0:
    assert d <= 0
  else:
    assert (k - 1) / G < d <= k / G
  # The mask of the cut keeps every pair of a bin up to the cut.
  for cut_bin in (max(k - 1, 0), k, k + 1):
    if k <= cut_bin:
      assert np.float32(s) >= _histograms.mask_similarity(cut_bin)


def _nearest_reference(similarity, depth, ref_order):
  """Columns (sorted-reference positions) of each row's `depth` nearest."""
  index = np.broadcast_to(ref_order, similarity.shape)
  order = np.lexsort((index, -similarity), axis=1)
  return order[:, :depth]


@pytest.mark.parametrize('depth', [1, 5, 40])
def test_the_nearest_among_the_chunks_are_the_nearest(depth):
  rng = np.random.default_rng(depth)
  rows, columns = 30, 1000
  # Few distinct values: ties across chunks and tiles.
  similarity = rng.integers(0, 50, size=(rows, columns)).astype(np.float32)
  ref_order = rng.permutation(columns)
  tile_columns = 512
  # Five more rows than the block's, as in a last block: never to be read.
  tiles = np.full((2, rows + 5, tile_columns), -np.inf, np.float32)
  tiles[:, rows:] = np.inf
  tiles[0, :rows] = similarity[:, :512]
  tiles[1, :rows, :columns - 512] = similarity[:, 512:]
  chunk_max = np.concatenate(
      [_one_pass.chunk_maxima(t[:rows]) for t in tiles], axis=1)
  got = _one_pass._nearest(chunk_max, tiles, depth, ref_order, columns)
  np.testing.assert_array_equal(
      got, _nearest_reference(similarity, depth, ref_order))


def test_thresholds_snap_to_the_nearest_edges_and_refuse_too_many():
  edges = _histograms.snap_thresholds(0.1, 0.2, 101)
  wanted = np.linspace(0.1, 0.2, 101)
  assert np.max(np.abs(edges / G - wanted)) <= 0.5 / G
  assert np.all(np.diff(edges) > 0)
  # round(0.1 * G) = 1638 to round(0.101 * G) = 1655: 18 edges.
  with pytest.raises(ValueError, match=r'num_thresholds=101 is more than the '
                     r"18 grid edges .* engine='exact'"):
    _histograms.snap_thresholds(0.1, 0.101, 101)


def test_a_threshold_past_the_cut_is_refused():
  histograms = _histograms.PairHistograms(
      np.ones((2, 12), np.int64), np.ones((2, 12), np.int64), 10)
  with pytest.raises(_histograms.BeyondCutError, match='past'):
    histograms.accepted(np.array([3, 11]))
  with pytest.raises(_histograms.BeyondCutError, match='FAR 0.99'):
    histograms.far_edge(0.99)
  assert histograms.far_edge(0.5) == 5


@pytest.mark.parametrize('kwargs, match', [
    (dict(engine='fast'), r"engine must be one of \['exact', 'histogram'\], "
     r"got 'fast'"),
    (dict(engine='histogram', product='torch'),
     r"product must be one of \['numpy', 'jax'\], got 'torch'"),
])
def test_bad_engine_options(kwargs, match):
  z, labels = _set(seed=11, num=100)
  with pytest.raises(ValueError, match=match):
    metrics.evaluate_embeddings(z, labels, **kwargs)


def test_a_beta_of_any_numeric_type():
  z, labels = _set(seed=11, num=100)
  got = metrics.evaluate_embeddings(z, labels, engine='histogram',
                                    beta=jax.numpy.float32(2.0))
  want = metrics.evaluate_embeddings(z, labels, engine='histogram', beta=2)
  assert got.opis == want.opis


def test_a_collapsed_embedding_is_named_as_such():
  labels = np.repeat(np.arange(5), 4)
  z = np.tile(np.eye(8, dtype=np.float32)[:1], (20, 1))
  with pytest.raises(metrics.CalibrationRangeError,
                     match='the embeddings have collapsed'):
    metrics.evaluate_embeddings(z, labels, engine='histogram')


def test_histograms_that_would_not_fit_are_refused_before_the_pass(
    monkeypatch):
  z, labels = _set(seed=12, num=200)
  monkeypatch.setattr(_one_pass, 'MAX_HISTOGRAM_BYTES', 2**20)
  monkeypatch.setattr(_one_pass, 'numpy_pass', None)  # never reached
  with pytest.raises(ValueError, match=r"needs .* GiB for the histograms of "
                     r"\d+ classes x \d+ distance bins .* engine='exact'"):
    metrics.evaluate_embeddings(z, labels, engine='histogram')


def test_counts_fit_in_int32_unless_a_class_has_too_many_pairs(monkeypatch):
  source = advanced.source_from_embeddings(np.eye(4), [0, 0, 1, 1])
  assert _one_pass.count_dtype(source) == np.int32
  monkeypatch.setattr(_one_pass, 'pair_totals', lambda source: (
      np.array([2, 2**31]), np.array([4, 4])))
  assert _one_pass.count_dtype(source) == np.int64


def test_rows_are_normalized_as_cosine_similarity_does():
  z = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
  z[3] *= 1e20
  z[4] = 0
  np.testing.assert_allclose(_one_pass._normalized(z),
                             tcm_jax.similarity.l2_normalize(z), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(_one_pass._normalized(z), axis=1),
                             np.r_[np.ones(4), 0, np.ones(45)], rtol=1e-6)


def test_chunk_maxima_are_the_maxima_of_strided_columns():
  tile = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
  got = _one_pass.chunk_maxima(tile)
  per_tile = 256 // _one_pass.CHUNK
  want = np.stack([tile[:, j::per_tile].max(axis=1) for j in range(per_tile)],
                  axis=1)
  np.testing.assert_array_equal(got, want)


def test_keys_counted_in_several_goes_count_the_same(small_tiles,
                                                     monkeypatch):
  z, labels = _set(seed=17)
  source = advanced.source_from_embeddings(z, labels)
  plan = metrics._retrieval.plan(source, (1,))
  whole = _one_pass.numpy_pass(source, plan, 20000, workers=1)
  monkeypatch.setattr(_one_pass, 'KEYS_AT_ONCE', 100)
  parts = _one_pass.numpy_pass(source, plan, 20000, workers=1)
  np.testing.assert_array_equal(parts.histograms.negative,
                                whole.histograms.negative)
  np.testing.assert_array_equal(parts.histograms.positive,
                                whole.histograms.positive)


def test_any_number_of_workers_counts_the_same(small_tiles):
  z, labels = _set(seed=13)
  source = advanced.source_from_embeddings(z, labels)
  plan = metrics._retrieval.plan(source, (1, 4))
  results = [_one_pass.numpy_pass(source, plan, 15000, workers=w)
             for w in (1, 3)]
  for got in results[1:]:
    np.testing.assert_array_equal(got.histograms.positive,
                                  results[0].histograms.positive)
    np.testing.assert_array_equal(got.histograms.negative,
                                  results[0].histograms.negative)
    np.testing.assert_allclose(got.class_sums, results[0].class_sums,
                               rtol=1e-12)


def test_progress_counts_every_block_once(small_tiles):
  z, labels = _set(seed=14)
  calls = []
  metrics.evaluate_embeddings(z, labels, engine='histogram',
                              progress=lambda done, total: calls.append(
                                  (done, total)))
  blocks = -(-len(labels) // 64)
  assert calls == [(i, blocks) for i in range(1, blocks + 1)]


def test_a_failing_block_stops_every_worker(small_tiles, monkeypatch):
  z, labels = _set(seed=15)
  source = advanced.source_from_embeddings(z, labels)
  plan = metrics._retrieval.plan(source, (1,))
  blocks = []
  failed = threading.Event()
  real_block = _one_pass._NumpyPass.block

  def failing(self, index, tiles, chunk_max):
    blocks.append(index)
    if index == 1:  # worker 1's first block
      failed.set()
      raise RuntimeError('disk on fire')
    failed.wait(timeout=60)  # worker 0 meanwhile: in its first block
    return real_block(self, index, tiles, chunk_max)

  monkeypatch.setattr(_one_pass._NumpyPass, 'block', failing)
  with pytest.raises(RuntimeError, match='disk on fire'):
    _one_pass.numpy_pass(source, plan, 15000, workers=2)
  # Worker 0 finishes the block it was in when worker 1 failed, no more.
  assert sorted(blocks) == [0, 1] and -(-len(labels) // 64) > 4


@pytest.mark.parametrize('distance_range', [(-0.1, 0.5), (0.5, 2.5)])
def test_a_distance_range_beyond_the_grid_is_refused(distance_range):
  z, labels = _set(seed=16, num=100)
  with pytest.raises(ValueError, match=r'distance_range must lie within '
                     r"\[0, 2.01562\] with engine='histogram'"):
    advanced.check_options(engine='histogram', distance_range=distance_range)
  with pytest.raises(ValueError, match=r'distance_range must lie within'):
    metrics.evaluate_embeddings(z, labels, engine='histogram',
                                distance_range=distance_range)
  metrics.evaluate_embeddings(z, labels, distance_range=distance_range)


def test_too_many_thresholds_for_an_explicit_range_are_refused_first():
  with pytest.raises(ValueError, match=r'num_thresholds=101 is more than the '
                     r'\d+ grid edges .* in distance_range'):
    advanced.check_options(engine='histogram', distance_range=(0.5, 0.501))
