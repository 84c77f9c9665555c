"""Utility curves, OPIS and eps-OPIS against the NumPy reference and properties."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from tcm_jax import metrics
from tests.metrics import reference
from tests.metrics.conftest import clustered_set
from tests.metrics.conftest import cosine

UNEQUAL = [3, 17, 2, 9, 30, 5, 12, 2, 8]


@pytest.mark.parametrize('beta', [1.0, 0.5, 2.0])
@pytest.mark.parametrize('block_size', [None, 7])
def test_matches_reference_with_explicit_range(beta, block_size):
  z, labels = clustered_set(0, UNEQUAL)
  s = cosine(z)
  curves = metrics.utility_curves(s, labels, distance_range=(0.1, 0.9),
                                  beta=beta, num_thresholds=31,
                                  block_size=block_size)
  classes, tpr, tnr = reference.class_rates(s, labels, None, curves.thresholds)
  np.testing.assert_array_equal(curves.classes, classes)
  # Exact counts: a pair counted differently would move a rate by 1/n.
  np.testing.assert_allclose(curves.tpr, tpr, rtol=0, atol=1e-12)
  np.testing.assert_allclose(curves.tnr, tnr, rtol=0, atol=1e-12)
  expected = reference.utility(tpr, tnr, beta)
  np.testing.assert_allclose(curves.utility, expected, atol=1e-6)
  got_opis = metrics.opis(s, labels, distance_range=(0.1, 0.9), beta=beta,
                          num_thresholds=31, block_size=block_size)
  assert abs(got_opis - reference.opis(expected)) < 1e-6
  for epsilon in (0.1, 0.25, 0.5):
    got = metrics.eps_opis(s, labels, distance_range=(0.1, 0.9), beta=beta,
                           num_thresholds=31, epsilon=epsilon,
                           block_size=block_size)
    assert abs(got - reference.eps_opis(expected, epsilon)) < 1e-6


def test_matches_reference_with_far_range():
  z, labels = clustered_set(1, UNEQUAL, spread=0.8)
  s = cosine(z)
  curves = metrics.utility_curves(s, labels)  # FAR 1e-3 .. 1e-1, 101 steps
  low, high = curves.calibration_range.distance
  assert abs(low - reference.far_quantile(s, labels, 1e-3)) < 1e-4
  assert abs(high - reference.far_quantile(s, labels, 1e-1)) < 1e-4
  assert len(curves.thresholds) == 101
  assert curves.thresholds[0] == np.float32(low)
  assert curves.thresholds[-1] == np.float32(high)
  _, tpr, tnr = reference.class_rates(s, labels, None, curves.thresholds)
  expected = reference.utility(tpr, tnr)
  np.testing.assert_allclose(curves.utility, expected, atol=1e-6)
  assert abs(metrics.opis(s, labels) - reference.opis(expected)) < 1e-6
  assert abs(metrics.eps_opis(s, labels)
             - reference.eps_opis(expected, 0.1)) < 1e-6


def test_queries_against_separate_references():
  z, labels = clustered_set(2, UNEQUAL)
  queries, refs = z[:40], z[40:]
  s = cosine(queries, refs)
  curves = metrics.utility_curves(s, labels[:40], labels[40:],
                                  distance_range=(0.0, 1.0), num_thresholds=21)
  classes, tpr, tnr = reference.class_rates(s, labels[:40], labels[40:],
                                            curves.thresholds)
  np.testing.assert_array_equal(curves.classes, classes)
  np.testing.assert_allclose(curves.tpr, tpr, rtol=0, atol=1e-12)
  np.testing.assert_allclose(curves.tnr, tnr, rtol=0, atol=1e-12)


def _identical_classes(seed, num_classes=5, size=6):
  """Every class has the same positive and the same negative distances."""
  rng = np.random.default_rng(seed)
  positive = rng.uniform(0.3, 1.0, size=(size, size))
  positive = (positive + positive.T) / 2
  negative = rng.uniform(-0.5, 0.6, size=(size, size))
  labels = np.repeat(np.arange(num_classes), size)
  position = np.tile(np.arange(size), num_classes)
  same = labels[:, None] == labels[None, :]
  s = np.where(same, positive[position][:, position],
               negative[position][:, position])
  return s.astype(np.float32), labels


def test_identical_class_distributions_give_zero_opis():
  s, labels = _identical_classes(3)
  assert metrics.opis(s, labels) < 1e-12
  assert metrics.eps_opis(s, labels) < 1e-12


def test_closer_positives_of_one_class_lower_its_frr_and_raise_opis():
  s, labels = _identical_classes(4)
  before = metrics.utility_curves(s, labels, distance_range=(0.0, 0.7))
  moved = s.copy()
  in_class_0 = (labels[:, None] == 0) & (labels[None, :] == 0)
  moved[in_class_0] = np.minimum(moved[in_class_0] + 0.1, 1.0)
  after = metrics.utility_curves(moved, labels, distance_range=(0.0, 0.7))
  frr_before, frr_after = 1 - before.tpr[0], 1 - after.tpr[0]
  assert np.all(frr_after <= frr_before) and np.any(frr_after < frr_before)
  np.testing.assert_array_equal(after.tpr[1:], before.tpr[1:])
  assert (metrics.opis_from_utility(after.utility)
          > metrics.opis_from_utility(before.utility) + 1e-4)


@hypothesis.settings(deadline=None, max_examples=15)
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_invariant_to_permuting_classes_and_samples(seed):
  rng = np.random.default_rng(seed)
  z, labels = clustered_set(seed % 1000, [4, 7, 3, 5])
  s = cosine(z)
  order = rng.permutation(len(labels))
  relabel = rng.permutation(10)[:4] * 7 - 3  # new, arbitrary class ids
  kwargs = dict(distance_range=(0.0, 1.2), num_thresholds=25)
  assert abs(metrics.opis(s, labels, **kwargs)
             - metrics.opis(s[order][:, order], relabel[labels[order]],
                            **kwargs)) < 1e-7
  assert abs(metrics.eps_opis(s, labels, epsilon=0.3, **kwargs)
             - metrics.eps_opis(s[order][:, order], relabel[labels[order]],
                                epsilon=0.3, **kwargs)) < 1e-7


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(seed=st.integers(0, 2**31 - 1),
                  num_classes=st.integers(2, 6))
def test_opis_at_most_a_quarter_and_rates_monotone(seed, num_classes):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, 24)
  labels[:num_classes * 2] = np.repeat(np.arange(num_classes), 2)
  s = rng.uniform(-1, 1, (24, 24)).astype(np.float32)
  curves = metrics.utility_curves(s, labels, distance_range=(0.0, 2.0),
                                  num_thresholds=15)
  assert 0.0 <= metrics.opis_from_utility(curves.utility) <= 0.25
  assert np.all(np.diff(curves.tpr, axis=1) >= 0)
  assert np.all(np.diff(curves.tnr, axis=1) <= 0)  # FAR = 1 - TNR rises


def test_extreme_utilities_give_the_maximum_opis():
  utility = np.array([[1.0] * 5, [0.0] * 5])
  assert float(metrics.opis_from_utility(utility)) == 0.25
  assert float(metrics.eps_opis_from_utility(utility, epsilon=0.5)) == 1.0


def _most_thresholds(low, high):
  """Reference: thresholds at least 4 float32 rounding units apart."""
  unit = float(np.spacing(np.float32(max(abs(low), abs(high)))))
  return int(np.floor((high - low) / (4 * unit))) + 1


def test_too_narrow_a_range_for_distinct_thresholds_is_refused():
  s = np.full((4, 4), 0.1, np.float32)
  limit = _most_thresholds(0.89999, 0.90001)
  assert 2 < limit < 1001
  with pytest.raises(ValueError, match=(
      rf'num_thresholds=1001 is more than the {limit} thresholds '
      r'distance_range \(0\.89999, 0\.90001\) holds at least 4 float32 '
      r'rounding units \(2\.4e-07\) apart.*use num_thresholds <= '
      rf'{limit}, or a wider distance_range')):
    metrics.utility_curves(s, [0, 0, 1, 1], distance_range=(0.89999, 0.90001),
                           num_thresholds=1001)
  curves = metrics.utility_curves(s, [0, 0, 1, 1],
                                  distance_range=(0.89999, 0.90001),
                                  num_thresholds=limit)
  assert len(np.unique(curves.thresholds)) == limit


def test_too_many_thresholds_for_any_range_are_refused_before_any_pass():
  # Once an error quoting the calibration range found (never passed), after
  # a pass over all pairs.
  z, labels = clustered_set(1, [5, 6, 7])
  limit = _most_thresholds(0.0, 2.0)
  calls = []
  with pytest.raises(ValueError, match=(
      rf'num_thresholds=10000000 is more than the {limit} thresholds the '
      r'whole distance range \(0, 2\) holds at least 4 float32 rounding '
      r'units')):
    metrics.evaluate_embeddings(z, labels, num_thresholds=10**7,
                                progress=lambda *a: calls.append(a))
  assert not calls
  with pytest.raises(ValueError, match=r'num_thresholds=10000000 is more'):
    metrics.opis(cosine(z), labels, num_thresholds=10**7)


def test_too_many_thresholds_for_the_range_found_name_it():
  z, labels = clustered_set(1, [5, 6, 7])
  result = metrics.evaluate_embeddings(z, labels)
  low, high = result.curves.calibration_range.distance
  limit = _most_thresholds(low, high)
  with pytest.raises(ValueError, match=(
      rf'num_thresholds={limit + 1} is more than the {limit} thresholds the '
      r'calibration range \(where the global FAR goes from 0\.001 to 0\.1\) '
      rf'\({low:.6g}, {high:.6g}\) holds.*use num_thresholds <= {limit}, or '
      r'a wider far_range')):
    metrics.evaluate_embeddings(z, labels, num_thresholds=limit + 1)


@pytest.mark.parametrize('beta', [1e-20, 1e20])
def test_extreme_finite_beta_gives_finite_utility(beta):
  tpr, tnr = np.array([0.0, 0.5, 1.0, 0.3]), np.array([1.0, 0.5, 0.0, 0.9])
  expected = reference.utility(tpr, tnr, beta)
  np.testing.assert_allclose(metrics.utility_from_rates(tpr, tnr, beta=beta),
                             expected, atol=1e-6)


@pytest.mark.parametrize('beta', [0.0, -1.0, float('inf'), float('nan')])
def test_bad_beta(beta):
  with pytest.raises(ValueError, match='beta must be a finite positive'):
    metrics.utility_from_rates([0.5], [0.5], beta=beta)


def test_eps_opis_of_one_class_is_zero():
  utility = np.array([[0.3, 0.4], [0.9, 0.9]])
  assert float(metrics.eps_opis_from_utility(
      utility, where=np.array([True, False]))) == 0.0
