"""Recall@K, MAP@R and R-precision against the NumPy reference."""

import numpy as np
import pytest

from tcm_jax import metrics
from tests.metrics import reference
from tests.metrics.conftest import clustered_set
from tests.metrics.conftest import cosine

KS = (1, 2, 4, 8, 16)


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('block_size', [None, 13])
def test_matches_reference(ties, block_size):
  z, labels = clustered_set(5, [3, 17, 1, 9, 30, 5, 12, 1, 8], spread=1.5)
  s = cosine(z)
  if ties:  # coarse similarities: many ties, broken by reference index
    s = np.round(s * 8) / 8
  recall, map_r, r_prec, excluded = reference.retrieval(s, labels, KS)
  got = metrics.recall_at_k(s, labels, ks=KS, block_size=block_size)
  assert got.keys() == recall.keys()
  for k in KS:
    assert abs(got[k] - recall[k]) < 1e-6, k
  assert abs(metrics.map_at_r(s, labels, block_size=block_size) - map_r) < 1e-6
  assert abs(metrics.r_precision(s, labels, block_size=block_size)
             - r_prec) < 1e-6
  assert excluded == 2  # the two singleton classes


def test_queries_against_separate_references():
  z, labels = clustered_set(6, [6, 9, 4, 7], spread=1.5)
  s = cosine(z[:10], z[10:])
  recall, map_r, r_prec, _ = reference.retrieval(s, labels[:10], (1, 3),
                                                 labels[10:])
  source = metrics.evaluate_similarity(
      s, labels[:10], labels[10:], ks=(1, 3), distance_range=(0.0, 1.0))
  assert source.retrieval.recall_at_k == pytest.approx(recall, abs=1e-6)
  assert source.retrieval.map_at_r == pytest.approx(map_r, abs=1e-6)
  assert source.retrieval.r_precision == pytest.approx(r_prec, abs=1e-6)


def test_ties_are_broken_by_reference_index():
  s = np.array([[1.0, 0.5, 0.5, 0.5],
                [0.5, 1.0, 0.5, 0.5],
                [0.5, 0.5, 1.0, 0.5],
                [0.5, 0.5, 0.5, 1.0]], np.float32)
  # Query 3 sees 0, 1, 2 tied: 0 (its class) comes first. Query 0 sees 1
  # first (another class), then 2, then 3 (its class).
  got = metrics.recall_at_k(s, [0, 1, 2, 0], ks=(1, 2, 3))
  assert got == {1: 0.5, 2: 0.5, 3: 1.0}


def test_negative_and_positive_zero_tie():
  s = np.array([[1.0, -0.0, 0.0], [-0.0, 1.0, 0.5], [0.0, 0.5, 1.0]],
               np.float32)
  # Query 0 ties -0.0 (ref 1, other class) with +0.0 (ref 2, its class):
  # the lower index, ref 1, comes first.
  assert metrics.recall_at_k(s, [0, 1, 0], ks=(1,)) == {1: 0.0}


def _per_query(similarity, labels, ks, ref_labels=None):
  """Per-query hits at each K, AP@R, R-precision, and whether evaluated.

  NumPy on the full matrix: a stable sort of the negated similarities ranks
  ties by reference index, lowest first; the self pair, when the queries are
  the references, is never relevant.
  """
  labels = np.asarray(labels)
  self_pairs = ref_labels is None
  ref_labels = labels if self_pairs else np.asarray(ref_labels)
  s = np.asarray(similarity, np.float32).astype(np.float64)
  if self_pairs:
    np.fill_diagonal(s, -np.inf)  # ranked last
  order = np.argsort(-s, axis=1, kind='stable')
  relevant = ref_labels[order] == labels[:, None]
  if self_pairs:
    relevant &= order != np.arange(len(labels))[:, None]
  r = relevant.sum(axis=1)
  found = np.cumsum(relevant, axis=1)
  ranks = np.arange(1, relevant.shape[1] + 1)
  within_r = ranks[None, :] <= r[:, None]
  safe_r = np.maximum(r, 1)
  average_precision = (np.where(relevant & within_r, found / ranks, 0.0)
                       .sum(axis=1) / safe_r)
  r_precision = found[np.arange(len(r)), np.maximum(r, 1) - 1] / safe_r
  columns = [found[:, min(k, relevant.shape[1]) - 1] > 0 for k in ks]
  columns += [average_precision, r_precision, np.ones(len(r))]
  return np.stack(columns, axis=1).astype(np.float64), r > 0


def _expected_class_sums(similarity, labels, ks, ref_labels=None):
  per_query, evaluated = _per_query(similarity, labels, ks, ref_labels)
  labels = np.asarray(labels)
  classes = np.unique(labels[evaluated])
  sums = np.stack([per_query[evaluated & (labels == c)].sum(axis=0)
                   for c in classes])
  return classes, sums


def _check_class_sums(got, classes, sums):
  np.testing.assert_array_equal(got.classes, classes)
  num_ks = len(got.ks)
  # Hits and counts are integers: exact. AP@R and R-precision are float32
  # sums on device.
  np.testing.assert_array_equal(got.class_sums[:, :num_ks], sums[:, :num_ks])
  np.testing.assert_array_equal(got.class_sums[:, -1], sums[:, -1])
  np.testing.assert_allclose(got.class_sums[:, num_ks:-1], sums[:, num_ks:-1],
                             rtol=0, atol=1e-5)
  # Summed over the classes: the scalar metrics.
  totals = got.class_sums.sum(axis=0)
  assert totals[-1] == got.num_queries
  for i, k in enumerate(got.ks):
    assert totals[i] / totals[-1] == got.recall_at_k[k]
  assert totals[num_ks] / totals[-1] == pytest.approx(got.map_at_r, abs=1e-6)
  assert totals[num_ks + 1] / totals[-1] == pytest.approx(got.r_precision,
                                                          abs=1e-6)
  rows = got.per_class()
  for i, k in enumerate(got.ks):
    np.testing.assert_array_equal(rows[f'recall_at_{k}'],
                                  sums[:, i] / sums[:, -1])
  np.testing.assert_allclose(rows['map_at_r'], sums[:, num_ks] / sums[:, -1],
                             atol=1e-6)
  np.testing.assert_array_equal(rows['num_queries'], sums[:, -1])


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('block_size', [None, 13])
def test_class_sums_match_a_per_query_reference(ties, block_size):
  z, labels = clustered_set(5, [3, 17, 1, 9, 30, 5, 12, 1, 8], spread=1.5)
  labels = labels * 3 + 10  # labels that are not the dense class ids
  s = cosine(z)
  if ties:
    s = np.round(s * 8) / 8
  got = metrics.evaluate_similarity(s, labels, ks=KS, block_size=block_size,
                                    distance_range=(0.1, 0.9)).retrieval
  classes, sums = _expected_class_sums(s, labels, KS)
  assert len(classes) == 7  # the two singleton classes have no row
  _check_class_sums(got, classes, sums)


def test_class_sums_with_separate_references():
  z, labels = clustered_set(6, [6, 9, 4, 7, 5], spread=1.5)
  queries = np.arange(len(labels)) % 3 == 0
  refs = ~queries
  s = cosine(z[queries], z[refs])
  got = metrics.evaluate_similarity(
      s, labels[queries], labels[refs], ks=(1, 3), block_size=4,
      distance_range=(0.0, 1.0)).retrieval
  classes, sums = _expected_class_sums(s, labels[queries], (1, 3),
                                       labels[refs])
  _check_class_sums(got, classes, sums)


_SINGLETONS = (r'labels: no query has a positive \(another sample of its '
               r'class among the references\): got 8 labels, all distinct '
               r'\(8 classes of one sample each\)')


@pytest.mark.parametrize('metric', [
    lambda s, y: metrics.recall_at_k(s, y, ks=(1, 2)),
    metrics.map_at_r, metrics.r_precision,
    # The threshold metrics give the same error for the same input.
    metrics.opis, metrics.utility_curves,
    lambda s, y: metrics.evaluate_similarity(s, y, distance_range=(0.1, 0.9)),
], ids=['recall_at_k', 'map_at_r', 'r_precision', 'opis', 'utility_curves',
        'evaluate_similarity'])
def test_only_singleton_classes_are_refused_not_nan(metric):
  z, _ = clustered_set(4, [8])
  with pytest.raises(ValueError, match=_SINGLETONS):
    metric(cosine(z), np.arange(8) * 10)


def test_no_query_class_among_the_references_is_refused():
  z, _ = clustered_set(4, [10])
  s = cosine(z[:4], z[4:])
  with pytest.raises(ValueError, match=(
      r'labels and ref_labels: no query has a positive \(a reference of its '
      r'class\): the queries\' 2 classes \[0, 1\] and the references\' 3 '
      r'classes \[2, 3, 4\] share none')):
    metrics.recall_at_k(s, [0, 0, 1, 1], [2, 2, 3, 3, 4, 4], ks=(1,))


def test_one_positive_is_enough_for_retrieval():
  # Queries without a positive are left out (and counted), as before.
  s = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.1], [0.2, 0.1, 1.0]],
               np.float32)
  assert metrics.recall_at_k(s, [0, 0, 1], ks=(1,)) == {1: 1.0}
