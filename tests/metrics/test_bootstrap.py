"""Bootstrap intervals over classes: known answers and a NumPy replication."""

import dataclasses

import numpy as np
import pytest

from tcm_jax import metrics
from tests.metrics import reference
from tests.metrics.conftest import clustered_set
from tests.metrics.conftest import cosine

SIZES = [3, 17, 1, 9, 30, 5, 12, 2, 8, 14, 6, 20]  # one singleton class
KS = (1, 2, 8)
RESAMPLES = 300


def _documented_draws(num_classes, num_resamples, seed):
  """The draws as the module documents them, written out here."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_classes, size=(num_resamples, num_classes))


def _percentiles(values, confidence=0.95):
  return (np.quantile(values, (1 - confidence) / 2),
          np.quantile(values, (1 + confidence) / 2))


def test_mean_of_iid_normals_matches_the_textbook_interval():
  values = np.random.default_rng(3).normal(loc=2.0, scale=1.5, size=400)
  interval = metrics.bootstrap_interval(np.mean, values, num_resamples=2000,
                                        seed=7)
  standard_error = values.std(ddof=1) / np.sqrt(len(values))
  assert interval.estimate == values.mean()
  assert interval.std == pytest.approx(standard_error, rel=0.1)
  assert interval.low == pytest.approx(values.mean() - 1.96 * standard_error,
                                       abs=0.2 * standard_error)
  assert interval.high == pytest.approx(values.mean() + 1.96 * standard_error,
                                        abs=0.2 * standard_error)
  assert (interval.num_resamples, interval.confidence) == (2000, 0.95)


def test_a_narrower_confidence_gives_a_narrower_interval():
  values = np.random.default_rng(4).normal(size=100)
  wide = metrics.bootstrap_interval(np.mean, values, confidence=0.95)
  narrow = metrics.bootstrap_interval(np.mean, values, confidence=0.5)
  assert wide.low < narrow.low < narrow.high < wide.high
  assert narrow.std == wide.std  # the same draws


def test_the_resamples_are_the_documented_draws():
  values = np.random.default_rng(5).exponential(size=50)
  got = metrics.bootstrap_interval(np.median, values, num_resamples=400,
                                   seed=11, confidence=0.9)
  draws = _documented_draws(50, 400, 11)
  np.testing.assert_array_equal(metrics.bootstrap_indices(50, 400, seed=11),
                                draws)
  resampled = np.array([np.median(values[rows]) for rows in draws])
  low, high = _percentiles(resampled, 0.9)
  assert (got.low, got.high) == (low, high)
  assert got.std == np.std(resampled, ddof=1)
  assert got.estimate == np.median(values)


def test_constant_statistic_gives_a_zero_width_interval():
  values = np.random.default_rng(6).normal(size=30)
  got = metrics.bootstrap_interval(lambda v: 0.25, values)
  assert got.estimate == got.low == got.high == 0.25
  assert got.std == 0.0
  constant = metrics.bootstrap_interval(np.mean, np.full(30, 0.1))
  assert constant.low == constant.high == constant.estimate
  assert constant.std == pytest.approx(0.0, abs=1e-15)


def test_same_seed_same_interval_another_seed_another():
  values = np.random.default_rng(7).normal(size=60)
  first = metrics.bootstrap_interval(np.mean, values, seed=1)
  assert metrics.bootstrap_interval(np.mean, values, seed=1) == first
  other = metrics.bootstrap_interval(np.mean, values, seed=2)
  assert other.estimate == first.estimate
  assert (other.low, other.high, other.std) != (first.low, first.high,
                                                first.std)


def test_arrays_are_resampled_by_the_same_rows():
  hits = np.array([3.0, 0.0, 5.0, 2.0, 7.0])
  queries = np.array([4.0, 2.0, 5.0, 3.0, 9.0])
  # Passed twice, an array stays equal to itself in every resample.
  same = metrics.bootstrap_interval(lambda a, b: float(np.all(a == b)),
                                    hits, hits.copy())
  assert same.low == same.high == 1.0
  got = metrics.bootstrap_interval(lambda h, q: h.sum() / q.sum(), hits,
                                   queries, num_resamples=200, seed=3)
  draws = _documented_draws(5, 200, 3)
  resampled = hits[draws].sum(axis=1) / queries[draws].sum(axis=1)
  assert (got.low, got.high) == pytest.approx(_percentiles(resampled),
                                              abs=1e-15)
  assert got.estimate == 17 / 23


def test_rows_of_two_dimensional_arrays_are_resampled():
  utility = np.random.default_rng(8).uniform(size=(10, 5))
  got = metrics.bootstrap_interval(reference.opis, utility, num_resamples=100)
  resampled = [reference.opis(utility[rows])
               for rows in _documented_draws(10, 100, 0)]
  assert (got.low, got.high) == pytest.approx(_percentiles(resampled),
                                              abs=1e-15)


@pytest.mark.parametrize('arrays, kwargs, match', [
    ((np.ones(5),), dict(num_resamples=0), r'num_resamples must be an integer '
     r'>= 1, got 0'),
    ((np.ones(5),), dict(num_resamples=-3), r'num_resamples .* got -3'),
    ((np.ones(5),), dict(num_resamples=10.5), r'num_resamples .* got 10.5'),
    ((np.ones(5),), dict(confidence=0.0), r'confidence must be in \(0, 1\), '
     r'got 0.0'),
    ((np.ones(5),), dict(confidence=1.0), r'confidence .* got 1.0'),
    ((np.ones(5),), dict(confidence=95), r'confidence .* got 95'),
    ((np.ones(5),), dict(confidence=float('nan')), r'confidence'),
    ((np.ones(1),), {}, r'at least 2 classes, got 1'),
    ((np.ones(0),), {}, r'at least 2 classes, got 0'),
    ((np.ones(5), np.ones(4)), {}, r'same length along axis 0 .* \[5, 4\]'),
    ((), {}, r'at least one per-class array'),
    ((np.float64(3.0),), {}, r'need a class axis'),
])
def test_bad_input(arrays, kwargs, match):
  with pytest.raises(ValueError, match=match):
    metrics.bootstrap_interval(np.mean, *arrays, **kwargs)


def test_statistic_must_be_a_scalar():
  with pytest.raises(ValueError, match=r'must return a scalar, got shape'):
    metrics.bootstrap_interval(lambda v: v * 2, np.arange(4.0))


@pytest.fixture(scope='module')
def small_set():
  z, labels = clustered_set(21, SIZES, spread=1.2)
  labels = labels * 5 + 3  # labels unlike the dense class ids
  result = metrics.evaluate_embeddings(z, labels, ks=KS, block_size=37)
  return z, labels, result


@pytest.fixture(scope='module')
def intervals(small_set):
  return metrics.class_bootstrap(small_set[2], num_resamples=RESAMPLES,
                                 seed=5)


def test_class_bootstrap_estimates_are_the_point_values(small_set, intervals):
  result = small_set[2]
  assert set(intervals) == {'recall_at_1', 'recall_at_2', 'recall_at_8',
                            'map_at_r', 'r_precision', 'opis', 'eps_opis',
                            'mean_utility', 'mean_tpr'}
  expected = {f'recall_at_{k}': v
              for k, v in result.retrieval.recall_at_k.items()}
  expected.update(map_at_r=result.retrieval.map_at_r,
                  r_precision=result.retrieval.r_precision,
                  opis=result.opis, eps_opis=result.eps_opis,
                  mean_utility=result.mean_utility, mean_tpr=result.mean_tpr)
  for name, interval in intervals.items():
    assert interval.estimate == expected[name], name
    assert interval.low <= interval.estimate <= interval.high, name
    assert interval.low < interval.high, name
    assert interval.std > 0, name
    assert (interval.num_resamples, interval.confidence) == (RESAMPLES, 0.95)


def _numpy_recall_at_1_by_class(z, labels):
  """Per-class R@1 hits and query counts, NumPy on the full matrix."""
  s = cosine(z).astype(np.float64)
  np.fill_diagonal(s, -np.inf)
  nearest = np.argmax(s, axis=1)  # first maximum: lowest index on ties
  has_pair = np.bincount(labels)[labels] > 1
  hit = labels[nearest] == labels
  classes = np.unique(labels[has_pair])
  hits = np.array([np.sum(hit[has_pair & (labels == c)]) for c in classes])
  queries = np.array([np.sum(has_pair & (labels == c)) for c in classes])
  return classes, hits, queries


def test_class_bootstrap_agrees_with_a_numpy_resampling(small_set, intervals):
  z, labels, result = small_set
  classes, hits, queries = _numpy_recall_at_1_by_class(z, labels)
  np.testing.assert_array_equal(result.curves.classes, classes)
  assert hits.sum() / queries.sum() == pytest.approx(
      result.retrieval.recall_at_k[1], abs=1e-12)
  draws = _documented_draws(len(classes), RESAMPLES, 5)
  recall = hits[draws].sum(axis=1) / queries[draws].sum(axis=1)
  got = intervals['recall_at_1']
  assert (got.low, got.high) == pytest.approx(_percentiles(recall), abs=1e-12)
  assert got.std == pytest.approx(np.std(recall, ddof=1), abs=1e-12)

  # The same draws for the utility metrics.
  utility = np.asarray(result.curves.utility, np.float64)
  opis = [reference.opis(utility[rows]) for rows in draws]
  eps = [reference.eps_opis(utility[rows], result.epsilon) for rows in draws]
  mean_tpr = [result.curves.tpr[rows].mean() for rows in draws]
  for name, values, tolerance in (('opis', opis, 1e-6),
                                  ('eps_opis', eps, 1e-5),
                                  ('mean_tpr', mean_tpr, 1e-12)):
    got = intervals[name]
    assert (got.low, got.high) == pytest.approx(_percentiles(values),
                                                abs=tolerance), name
    assert got.std == pytest.approx(np.std(values, ddof=1),
                                    abs=tolerance), name


def test_class_bootstrap_is_reproducible(small_set, intervals):
  result = small_set[2]
  again = metrics.class_bootstrap(result, num_resamples=RESAMPLES, seed=5)
  assert again == intervals
  other = metrics.class_bootstrap(result, num_resamples=RESAMPLES, seed=6)
  assert other['opis'].estimate == intervals['opis'].estimate
  assert other['opis'].low != intervals['opis'].low


def test_class_bootstrap_evaluates_resamples_in_chunks(monkeypatch, small_set,
                                                       intervals):
  from tcm_jax.metrics import _bootstrap
  monkeypatch.setattr(_bootstrap, '_CHUNK_ELEMENTS', 1000)  # a few rows each
  chunked = metrics.class_bootstrap(small_set[2], num_resamples=RESAMPLES,
                                    seed=5)
  for name in intervals:
    assert chunked[name] == pytest.approx(intervals[name], abs=1e-7), name


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_resamples=0), r'num_resamples must be an integer >= 1'),
    (dict(confidence=1.0), r'confidence must be in \(0, 1\)'),
    (dict(confidence=0.0), r'confidence must be in \(0, 1\)'),
])
def test_class_bootstrap_bad_input(small_set, kwargs, match):
  with pytest.raises(ValueError, match=match):
    metrics.class_bootstrap(small_set[2], **kwargs)


def test_class_bootstrap_refuses_mismatched_classes(small_set):
  result = small_set[2]
  retrieval = dataclasses.replace(
      result.retrieval, classes=result.retrieval.classes[1:],
      class_sums=result.retrieval.class_sums[1:])
  with pytest.raises(ValueError, match=r'classes differ \(10 and 11 classes\)'):
    metrics.class_bootstrap(dataclasses.replace(result, retrieval=retrieval))
