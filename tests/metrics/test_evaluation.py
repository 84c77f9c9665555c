"""The streamed evaluation of embeddings against the matrix functions."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import tcm_jax
from tcm_jax import metrics
from tcm_jax.metrics import advanced
from tests.metrics import reference
from tests.metrics.conftest import clustered_set
from tests.metrics.conftest import cosine


@pytest.fixture(scope='module')
def two_thousand():
  sizes = np.random.default_rng(9).integers(2, 60, size=70)
  sizes[:3] = 1  # three singleton classes
  z, labels = clustered_set(9, sizes[np.cumsum(sizes) <= 2000], dim=16)
  return z, labels


@pytest.fixture(scope='module')
def matrix_result(two_thousand):
  z, labels = two_thousand
  similarity = tcm_jax.cosine_similarity(
      z, precision=jax.lax.Precision.HIGHEST)
  return metrics.evaluate_similarity(similarity, labels, ks=(1, 4, 16))


@pytest.mark.parametrize('block_size', [333, 512, 1999])
def test_streaming_equals_the_matrix_functions(two_thousand, matrix_result,
                                               block_size):
  z, labels = two_thousand
  assert len(labels) % block_size != 0
  streamed = metrics.evaluate_embeddings(z, labels, ks=(1, 4, 16),
                                         block_size=block_size)
  expected = matrix_result
  assert streamed.curves.calibration_range == expected.curves.calibration_range
  np.testing.assert_array_equal(streamed.curves.thresholds,
                                expected.curves.thresholds)
  # The same counts, except that a matmul over another block shape may round
  # a similarity by one ulp (some XLA versions do), which can move a pair
  # lying exactly at a threshold: allow a handful of single-pair differences.
  for got, want in ((streamed.curves.tpr, expected.curves.tpr),
                    (streamed.curves.tnr, expected.curves.tnr)):
    differ = np.abs(got - want) > 1e-12
    assert differ.sum() <= 4
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  assert streamed.opis == pytest.approx(expected.opis, abs=1e-6)
  assert streamed.eps_opis == pytest.approx(expected.eps_opis, abs=1e-6)
  assert streamed.retrieval.recall_at_k == expected.retrieval.recall_at_k
  # Sums of float32 per-query averages: blocks group them differently.
  assert streamed.retrieval.map_at_r == pytest.approx(
      expected.retrieval.map_at_r, abs=1e-6)
  assert streamed.retrieval.r_precision == pytest.approx(
      expected.retrieval.r_precision, abs=1e-6)
  assert streamed.calibration.threshold == expected.calibration.threshold
  np.testing.assert_allclose(streamed.calibration.class_frr,
                             expected.calibration.class_frr, atol=1e-3)


def test_matrix_evaluation_matches_reference(two_thousand, matrix_result):
  z, labels = two_thousand
  s = cosine(z)
  result = matrix_result
  assert len(result.excluded_classes) == 3
  assert result.retrieval.num_excluded_queries == 3
  similarity = np.asarray(tcm_jax.cosine_similarity(
      z, precision=jax.lax.Precision.HIGHEST))
  recall, map_r, r_prec, excluded = reference.retrieval(
      similarity, labels, (1, 4, 16))
  assert excluded == 3
  for k in (1, 4, 16):
    assert result.retrieval.recall_at_k[k] == pytest.approx(recall[k], abs=1e-6)
  assert result.retrieval.map_at_r == pytest.approx(map_r, abs=1e-6)
  assert result.retrieval.r_precision == pytest.approx(r_prec, abs=1e-6)
  low, high = result.curves.calibration_range.distance
  assert abs(low - reference.far_quantile(s, labels, 1e-3)) < 1e-4
  assert abs(high - reference.far_quantile(s, labels, 1e-1)) < 1e-4
  negatives = reference.negative_distances(s, labels)
  assert result.far_reached[0] == pytest.approx(
      np.mean(negatives <= result.curves.thresholds[0]), abs=1e-4)
  assert 0.0 < result.opis <= 0.25
  report = result.to_dict()
  assert report['num_classes_evaluated'] == len(result.curves.classes)
  assert report['calibration_range']['far'] == [1e-3, 1e-1]


def _bad(**overrides):
  z, labels = clustered_set(10, [5, 6, 7])
  kwargs = dict(embeddings=z, labels=labels)
  kwargs.update(overrides)
  return lambda: metrics.evaluate_embeddings(**kwargs)


@pytest.mark.parametrize('call, error, match', [
    (_bad(embeddings=np.where(np.arange(18)[:, None] % 7 == 0, np.nan,
                              clustered_set(10, [5, 6, 7])[0])),
     ValueError, r'embeddings has 3 rows with NaN or infinite values '
     r'\(rows \[0, 7, 14\]\)'),
    (_bad(embeddings=np.full((18, 8), np.inf)), ValueError, r'18 rows'),
    (_bad(labels=np.zeros(17, int)), ValueError,
     r'labels must have shape \(18,\), one per row, got shape \(17,\)'),
    (_bad(labels=np.zeros(18)), TypeError, r'labels must have an integer'),
    (_bad(labels=np.r_[np.zeros(17, int), 1]), ValueError,
     r'at least two classes with at least two samples .* got 1 among 2'),
    (_bad(far_range=(0.1, 0.1)), ValueError,
     r'far_range must satisfy .* got \(0.1, 0.1\): empty or reversed'),
    (_bad(far_range=(0.2, 0.1)), ValueError, r'far_range .* reversed'),
    (_bad(far_range=(0.0, 0.1)), ValueError, r'far_range must start above 0'),
    (_bad(distance_range=(0.8, 0.3)), ValueError,
     r'distance_range .* got \(0.8, 0.3\)'),
    (_bad(distance_range=(0.3, float('nan'))), ValueError, r'distance_range'),
    (_bad(num_thresholds=1), ValueError,
     r'num_thresholds must be an integer >= 2, got 1'),
    (_bad(epsilon=0.0), ValueError, r'epsilon must be in \(0, 1\), got 0.0'),
    (_bad(epsilon=1.0), ValueError, r'epsilon must be in \(0, 1\), got 1.0'),
    (_bad(target_far=0.0), ValueError, r'target_far must be .* got 0.0'),
    (_bad(ks=(0, 1)), ValueError, r'ks must be positive integers'),
    (_bad(embeddings=np.zeros(18)), ValueError, r'embeddings must be 2-D'),
    (_bad(block_size=0), ValueError, r'block_size must be a positive integer'),
    (_bad(block_size=-1), ValueError, r'block_size must be a positive integer'),
    (_bad(beta=float('inf')), ValueError, r'beta must be a finite positive'),
])
def test_bad_input(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_progress_is_reported_per_block():
  z, labels = clustered_set(11, [10, 12, 9])
  calls = []
  metrics.evaluate_embeddings(z, labels, block_size=8,
                              progress=lambda done, total: calls.append(
                                  (done, total)))
  assert calls == [(i, 8) for i in range(1, 9)]  # 4 blocks, two passes


@pytest.mark.parametrize('backend, refs, rows', [
    ('cpu', 20_000, 104),     # 2**21 // 20,000 = 104, a multiple of 8
    ('cpu', 500, 4_000),      # 4,194 rows, cut to the 4,000 queries
    ('gpu', 20_000, 3_352),   # 2**26 // 20,000 = 3,355, down to a multiple of 8
    ('tpu', 10**7, 8),        # never fewer than 8 rows
])
def test_default_block_follows_the_backend(monkeypatch, backend, refs, rows):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  source = advanced.source_from_embeddings(
      np.ones((4_000, 2), np.float32), np.arange(4_000) % 7,
      np.ones((refs, 2), np.float32), np.arange(refs) % 7)
  assert source.rows_per_block == rows


def test_class_sums_add_up_and_match_the_utility_classes(matrix_result):
  retrieval = matrix_result.retrieval
  # Every class with a query evaluated is an evaluated (utility) class.
  np.testing.assert_array_equal(retrieval.classes,
                                matrix_result.curves.classes)
  assert retrieval.class_sums.shape == (len(retrieval.classes), 3 + 3)
  assert np.all(retrieval.class_sums[:, -1] >= 1)
  totals = retrieval.class_sums.sum(axis=0)
  assert totals[-1] == retrieval.num_queries
  for i, k in enumerate((1, 4, 16)):
    assert totals[i] / totals[-1] == retrieval.recall_at_k[k]
  assert totals[3] / totals[-1] == pytest.approx(retrieval.map_at_r, abs=1e-6)
  assert totals[4] / totals[-1] == pytest.approx(retrieval.r_precision,
                                                 abs=1e-6)


def test_streamed_class_sums_equal_the_matrix_ones(two_thousand,
                                                   matrix_result):
  z, labels = two_thousand
  streamed = metrics.evaluate_embeddings(z, labels, ks=(1, 4, 16),
                                         block_size=333).retrieval
  expected = matrix_result.retrieval
  np.testing.assert_array_equal(streamed.classes, expected.classes)
  np.testing.assert_array_equal(streamed.class_sums[:, [0, 1, 2, 5]],
                                expected.class_sums[:, [0, 1, 2, 5]])
  np.testing.assert_allclose(streamed.class_sums, expected.class_sums,
                             rtol=0, atol=1e-4)


def test_mean_utility_and_tpr_over_classes_and_thresholds(matrix_result):
  curves = matrix_result.curves
  utility = np.asarray(curves.utility, np.float64)
  assert matrix_result.mean_utility == pytest.approx(utility.mean(), abs=1e-12)
  assert matrix_result.mean_tpr == pytest.approx(curves.tpr.mean(), abs=1e-12)
  np.testing.assert_allclose(matrix_result.class_mean_utility,
                             utility.mean(axis=1), atol=1e-12)
  assert 0.0 < matrix_result.mean_tpr < 1.0
  report = matrix_result.to_dict()
  assert report['mean_utility'] == matrix_result.mean_utility
  assert report['mean_tpr'] == matrix_result.mean_tpr
  assert 'per_class' not in report


def test_per_class_report_is_behind_a_flag_and_json_ready(matrix_result):
  report = matrix_result.to_dict(per_class=True)
  json.dumps(report, allow_nan=False)
  rows = report['per_class']
  retrieval = matrix_result.retrieval
  assert rows['retrieval']['classes'] == retrieval.classes.tolist()
  assert rows['retrieval']['num_queries'] == (
      retrieval.class_sums[:, -1].astype(int).tolist())
  np.testing.assert_array_equal(
      rows['retrieval']['recall_at_4'],
      retrieval.class_sums[:, 1] / retrieval.class_sums[:, -1])
  assert set(rows['retrieval']) == {'classes', 'num_queries', 'recall_at_1',
                                    'recall_at_4', 'recall_at_16', 'map_at_r',
                                    'r_precision'}
  assert rows['utility']['classes'] == matrix_result.curves.classes.tolist()
  np.testing.assert_allclose(rows['utility']['mean_tpr'],
                             matrix_result.curves.tpr.mean(axis=1))
  without = {k: v for k, v in report.items() if k != 'per_class'}
  assert without == matrix_result.to_dict()


def _assert_same_evaluation(got, want, path='evaluation'):
  """Every field of two evaluations (nested dataclasses, arrays, dicts)."""
  if dataclasses.is_dataclass(want):
    assert type(got) is type(want), path
    for field in dataclasses.fields(want):
      _assert_same_evaluation(getattr(got, field.name),
                              getattr(want, field.name),
                              f'{path}.{field.name}')
  elif isinstance(want, dict):
    assert got.keys() == want.keys(), path
    for key in want:
      _assert_same_evaluation(got[key], want[key], f'{path}[{key!r}]')
  elif isinstance(want, (tuple, list)) and not all(
      isinstance(v, (int, float)) for v in want):
    assert len(got) == len(want), path
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_same_evaluation(g, w, f'{path}[{i}]')
  else:
    np.testing.assert_allclose(np.asarray(got, np.float64),
                               np.asarray(want, np.float64), rtol=1e-6,
                               atol=1e-7, err_msg=path)


def _assert_scale_free(z, scaled, labels, queries_as_list=False):
  """`scaled` rows evaluate as `z` does: leave-one-out and as a gallery."""
  want = metrics.evaluate_embeddings(z, labels, ks=(1, 2))
  _assert_same_evaluation(metrics.evaluate_embeddings(scaled, labels,
                                                      ks=(1, 2)), want)
  half = np.arange(len(z)) % 2 == 0
  want = metrics.evaluate_embeddings(z[half], labels[half], z[~half],
                                     labels[~half], ks=(1,))
  queries = scaled[half].tolist() if queries_as_list else scaled[half]
  _assert_same_evaluation(metrics.evaluate_embeddings(
      queries, labels[half], scaled[~half], labels[~half], ks=(1,)), want)


@pytest.mark.parametrize('scale', ['2**66', '1e20', '1e-20', 'per row'])
def test_the_scale_of_the_embeddings_does_not_matter(scale):
  # Cosine similarity is scale-free; in float32 the squared norm of a row
  # x 1e20 overflows (and of a row x 1e-20 underflows below the clamp),
  # which once made such rows zero vectors.
  z = np.asarray(jax.random.normal(jax.random.key(0), (8, 4)))
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  z = np.concatenate([z, clustered_set(3, [5, 6, 7, 4], dim=4)[0]])
  labels = np.concatenate([labels, np.repeat(np.arange(4, 8), [5, 6, 7, 4])])
  factor = {'2**66': 2.0**66, '1e20': 1e20, '1e-20': 1e-20,
            'per row': 10.0**np.random.default_rng(0).uniform(
                -30, 30, (len(z), 1))}[scale]
  scaled = (z.astype(np.float64) * factor).astype(np.float32)
  assert np.all(np.isfinite(scaled)) and np.all(np.abs(scaled).max(1) > 0)
  _assert_scale_free(z, scaled, labels)


@pytest.mark.parametrize('scale', ['1e200', '1e-200', 'per row'])
def test_float64_rows_beyond_float32_are_measured_by_their_direction(scale):
  # JAX holds float64 as float32 unless jax_enable_x64 is set: rows x 1e200
  # once became infinite (refused as 'NaN or infinite') and rows x 1e-200
  # zero (a collapsed embedding).
  assert not jax.config.jax_enable_x64
  z, labels = clustered_set(3, [5, 6, 7, 4], dim=4)
  z = z.astype(np.float64)
  factor = {'1e200': 1e200, '1e-200': 1e-200,
            'per row': 10.0**np.random.default_rng(0).uniform(
                -300, 300, (len(z), 1))}[scale]
  scaled = z * factor
  assert np.all(np.isfinite(scaled)) and np.all(np.abs(scaled).max(1) > 0)
  _assert_scale_free(z, scaled, labels, queries_as_list=True)


def test_only_the_rows_that_are_not_finite_are_named_among_huge_ones():
  z, labels = clustered_set(3, [5, 6, 7, 4], dim=4)
  z = z.astype(np.float64) * 1e200
  z[[2, 9], 1] = np.inf, np.nan
  with pytest.raises(ValueError, match=r'^embeddings has 2 rows with NaN or '
                     r'infinite values \(rows \[2, 9\]\)\.$'):
    metrics.evaluate_embeddings(z, labels)
  with pytest.raises(ValueError, match=r'^ref_embeddings has 2 rows .* '
                     r'\(rows \[2, 9\]\)\.$'):
    metrics.evaluate_embeddings(z[[0, 1]] + 1, labels[[0, 1]], z, labels)
